//! `observer::diagnosis` against the real OceanBase kernel: seekdb started on a
//! port another listener holds fails about a second after it starts, and the
//! diagnosis must name OceanBase's code for it (-4016, from the ERROR line
//! written for the operator, not the EDIAG lines of its bootstrap) with the
//! ERROR lines since the start, read through the wrapper's root-owned
//! `log/observer.log -> seekdb.log` link.

mod common;

use std::net::TcpListener;
use std::process::Command;

use obhost::observer::diagnosis::{LogMark, diagnose};

#[test]
fn seekdb_on_a_taken_port_is_diagnosed_in_oceanbases_terms() {
    let Some(seekdb) = common::seekdb() else {
        return;
    };
    let home = common::Home::new();
    common::install_seekdb(&home, &seekdb);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mark = LogMark::take(home.path());
    assert_eq!(
        mark,
        LogMark::default(),
        "a first start has nothing before it"
    );
    let out = Command::new(home.path().join("bin/observer"))
        .args(["-p", &port.to_string(), "-N"])
        .current_dir(home.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "seekdb started on a taken port");
    let d = diagnose(home.path(), &mark);
    let all = d.lines.join("\n");
    let header = format!("==> {} <==", home.path().join("log/observer.log").display());
    assert_eq!(d.lines.first(), Some(&header), "{all}");
    assert!(!all.contains("] INFO "), "{all}");
    // Most runs seekdb writes its ERROR line ("observer start fail", -4016)
    // before it exits, and that code wins over its bootstrap's EDIAG -4109.
    // Now and then (once in a clean-clone CI run) it exits 1 before that
    // line: then the first EDIAG code is all there is, and is what is named.
    if all.contains("] ERROR ") {
        assert!(all.contains("observer start fail"), "{all}");
        assert_eq!(d.ob_errcode.as_deref(), Some("-4016"), "{all}");
        assert!(
            d.hint
                .as_deref()
                .is_some_and(|h| h.starts_with("OB_ERR_UNEXPECTED"))
        );
    } else {
        assert!(all.contains("] EDIAG "), "{all}");
        let first = d.lines.iter().find(|l| l.contains("] EDIAG ")).unwrap();
        assert_eq!(
            d.ob_errcode,
            obhost::observer::diagnosis::errcode(first),
            "{all}"
        );
    }
    drop(taken);
}
