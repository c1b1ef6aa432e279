//! The `ldx-node` binary.

fn main() -> std::process::ExitCode {
    ldx_node::cli::main()
}
