// glibc's malloc spent a third of a 100,000-agent read's CPU in allocating and freeing (entries
// are decoded on the connection's thread and freed on others); jemalloc cuts a no-op run's CPU
// by a third to a half (README, "Scale").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    matrix_ldap_sync::cli::main()
}
