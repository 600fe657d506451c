use anyhow::{Context, bail};
use query_service::{Application, Settings};

const USAGE: &str = "usage: query-service [serve | rebuild | token --sub NAME --scope \"SCOPES\"]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = service_kit::settings::load().context("invalid configuration")?;
    if let Some(outcome) = service_kit::auth::run_token_command(std::env::args(), &settings.auth) {
        return outcome;
    }
    service_kit::telemetry::init(settings.json_logs());
    let shutdown = service_kit::shutdown::on_signal();
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown).await
        }
        Some("rebuild") => query_service::rebuild::run(&settings, shutdown)
            .await
            .map(|_| ()),
        Some("help" | "--help" | "-h") => {
            eprintln!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}; {USAGE}"),
    }
}
