//! The `ldx-gateway` binary.

fn main() -> std::process::ExitCode {
    ldx_gateway::cli::main()
}
