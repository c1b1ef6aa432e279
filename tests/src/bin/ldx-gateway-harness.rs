//! `ldx-gateway` exactly as shipped (the same entry point), built by cargo for these tests
//! so that they never run a stale binary.

fn main() -> std::process::ExitCode {
    ldx_gateway::cli::main()
}
