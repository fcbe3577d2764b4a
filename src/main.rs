use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = pgshift::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PGSHIFT_LOG")
                .unwrap_or_else(|_| EnvFilter::new("pgshift=info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    if let Err(e) = pgshift::cli::run(cli).await {
        eprintln!("error: {e}");
        std::process::exit(match e.kind() {
            pgshift::Kind::Parse | pgshift::Kind::Invalid | pgshift::Kind::Config => 2,
            _ => 1,
        });
    }
}
