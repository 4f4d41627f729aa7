//! Compiles the API contract in proto/ with protox (a pure-Rust protobuf compiler),
//! so `cargo build` needs no protoc on the machine.
//!
//! Outputs, all in OUT_DIR:
//! - prost/tonic code for `obhost.v1` and `obhost.testing.v1`;
//! - pbjson serde impls, so obhostctl prints the canonical protobuf JSON mapping;
//! - `obhost_v1_descriptor.bin` (server reflection in release builds) and
//!   `obhost_all_descriptor.bin` (reflection with the test service as well).

use std::path::PathBuf;

use protox::prost::Message;

/// What obhostd serves: reflection describes these and nothing else.
const V1: &[&str] = &[
    "proto/obhost/v1/steps.proto",
    "proto/obhost/v1/observer.proto",
    "proto/obhost/v1/host.proto",
    "proto/obhost/v1/host_agent.proto",
];
/// The service obhostd calls (the orchestrator serves it): compiled for the
/// client and for `obhostctl report-sink`, but never listed by reflection.
const REPORTER: &str = "proto/obhost/v1/step_reporter.proto";
const TESTING: &str = "proto/obhost/testing/v1/testing.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");

    let v1 = protox::compile(V1, ["proto"])?;
    std::fs::write(out.join("obhost_v1_descriptor.bin"), v1.encode_to_vec())?;

    let mut served: Vec<&str> = V1.to_vec();
    served.push(TESTING);
    let served = protox::compile(served, ["proto"])?;
    std::fs::write(
        out.join("obhost_all_descriptor.bin"),
        served.encode_to_vec(),
    )?;

    let mut all_files: Vec<&str> = V1.to_vec();
    all_files.push(TESTING);
    all_files.push(REPORTER);
    let all = protox::compile(all_files, ["proto"])?;
    let all_bytes = all.encode_to_vec();

    tonic_prost_build::configure()
        // pbjson_types carries serde for Timestamp/Duration; prost-build only lets
        // the default prost_types mapping be replaced when well-known types are
        // "compiled", and the extern path then points them at pbjson_types.
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        // The records keep their maps ordered (BTreeMap); proto maps of the same
        // type take them as they are, with no rehashing on every step sent.
        .btree_map(".")
        .compile_fds(all)?;

    pbjson_build::Builder::new()
        .register_descriptors(&all_bytes)?
        .btree_map([".obhost"])
        .build(&[".obhost"])?;

    // obhost_build_info{commit}: the checkout's short commit, or "unknown"
    // (a source tarball, no git). Rerun when HEAD moves; only files that
    // exist are named (a missing one would rerun this script every build).
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"])
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=OBHOST_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=OBHOST_BUILD_DATE={}", build_date()?);
    let branch = git(&["rev-parse", "--symbolic-full-name", "HEAD"]).unwrap_or_default();
    for path in ["HEAD", branch.as_str()] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]).map(PathBuf::from)
            && !path.is_empty()
            && p.is_file()
        {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    Ok(())
}

/// The build's UTC date (YYYY-MM-DD) for `-V`: SOURCE_DATE_EPOCH when set
/// (reproducible builds, <https://reproducible-builds.org/specs/source-date-epoch/>;
/// scripts/build-deb.sh sets it to the commit's time), else now. Without it, the
/// date is when this script last ran: it reruns when HEAD or proto/ change.
fn build_date() -> Result<String, Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let when = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(secs) => {
            let secs: u64 = secs.trim().parse().map_err(|_| {
                format!("SOURCE_DATE_EPOCH={secs:?} is not a number of seconds since 1970; unset it or give e.g. $(git log -1 --format=%ct)")
            })?;
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
        }
        Err(_) => std::time::SystemTime::now(),
    };
    // RFC 3339 in UTC ("2026-11-29T12:00:00Z"): its first ten bytes are the date.
    let stamp = humantime::format_rfc3339_seconds(when).to_string();
    Ok(stamp.get(..10).unwrap_or(&stamp).to_string())
}
