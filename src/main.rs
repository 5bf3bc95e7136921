fn main() -> std::process::ExitCode {
    matrix_ldap_sync::cli::main()
}
