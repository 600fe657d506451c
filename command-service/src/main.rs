use anyhow::Context;
use command_service::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = service_kit::settings::load().context("invalid configuration")?;
    if let Some(outcome) = service_kit::auth::run_token_command(std::env::args(), &settings.auth) {
        return outcome;
    }
    service_kit::telemetry::init(settings.json_logs());
    let shutdown = service_kit::shutdown::on_signal();
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown).await
}
