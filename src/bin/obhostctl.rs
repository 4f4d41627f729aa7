//! obhostctl: the operator's client for obhostd. All of it lives in `obhost::cli`.

fn main() -> std::process::ExitCode {
    obhost::cli::main()
}
