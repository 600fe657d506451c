use anyhow::Context;
use command_service::{Application, Settings};

/// mimalloc (transparent huge pages off, which kept its RSS at glibc's): a credit
/// allocates and frees many small buffers, and glibc's malloc took about a tenth of the
/// service's CPU. With mimalloc a credit at 4 clients cost 10-15% less CPU relative to
/// cqrs-es's in the same runs (`bench --only cqrs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
