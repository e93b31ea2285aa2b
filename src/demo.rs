//! `defender-proxy demo`: the sandbox and the proxy wired to it, offline.

/// Runs the demo until `shutdown`.
pub async fn run(_listen: &str, _shutdown: impl std::future::Future<Output = ()>) -> Result<(), crate::RunError> {
    Ok(())
}
