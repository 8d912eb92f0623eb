//! The shutdown future every binary's `run` receives.

/// Resolves on the first SIGTERM or SIGINT received after it is first polled.
///
/// If a signal handler cannot be installed (which does not happen on a normal Unix system) the failure is
/// logged and that signal is simply never seen; the other one still works.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
    }
}
