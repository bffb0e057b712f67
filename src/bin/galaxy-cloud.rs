//! `galaxy-cloud`, the cloud backend. All of it lives in the `cloud` crate
//! (`cloud::main_entry`); the binary is declared in this package so the
//! end-to-end tests in `tests/` can start it through
//! `CARGO_BIN_EXE_galaxy-cloud`, which Cargo only provides for binaries of
//! the test's own package.

// mimalloc: the engine's many small allocations (JSON values, history
// events) cost noticeably less CPU than with the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cloud::main_entry()
}
