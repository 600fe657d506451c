//! The services' binaries, built once per test process by the same cargo and profile
//! that built the tests, so that `cargo test -p e2e-tests` alone is enough.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The services under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    CommandService,
    QueryService,
}

impl Binary {
    pub fn name(self) -> &'static str {
        match self {
            Self::CommandService => "command-service",
            Self::QueryService => "query-service",
        }
    }

    /// Path of the freshly built binary.
    pub fn path(self) -> PathBuf {
        profile_dir().join(self.name())
    }
}

/// `target/<profile>` of the running executable (`target/<profile>/deps/<test>` for a
/// test, `target/<profile>/<bin>` for a binary).
pub fn profile_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe()
            .unwrap_or_else(|error| panic!("no path of the running executable: {error}"));
        let Some(parent) = exe.parent() else {
            panic!("{} lives in no directory", exe.display());
        };
        let mut dir = parent.to_path_buf();
        if dir.file_name().is_some_and(|name| name == "deps") {
            dir.pop();
        }
        dir
    })
}

/// What Cargo sets for a running test or binary about its own package and target.
const PACKAGE_VARIABLES: [&str; 9] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
    "RUST_RECURSION_COUNT",
];

/// Builds both services' binaries once per process (a no-op when they are fresh).
pub fn ensure_built() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(message) = BUILT.get_or_init(build) {
        panic!("{message}");
    }
}

fn build() -> Result<(), String> {
    let cargo = std::env::var("CARGO")
        .ok()
        .or_else(|| option_env!("CARGO").map(str::to_owned))
        .unwrap_or_else(|| "cargo".to_owned());
    let Some(workspace) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() else {
        panic!("the crate lives in no workspace");
    };
    let profile_dir = profile_dir();
    let Some(target_dir) = profile_dir.parent() else {
        panic!("{} lives in no target directory", profile_dir.display());
    };
    let mut command = Command::new(&cargo);
    // Cargo describes the test's own package to the test process (CARGO_MANIFEST_DIR,
    // CARGO_PKG_*, ...). Passed on, they would look like a changed environment to build
    // scripts that watch them (ring's does), and rebuild half the workspace each time.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_") || PACKAGE_VARIABLES.contains(&name.as_ref()) {
            command.env_remove(name.as_ref());
        }
    }
    command
        .current_dir(workspace)
        .args([
            "build",
            "--quiet",
            "--bins",
            "-p",
            "command-service",
            "-p",
            "query-service",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(profile) => {
            command.args(["--profile", profile]);
        }
    }
    let started = std::time::Instant::now();
    let status = command
        .status()
        .map_err(|error| format!("cannot run {cargo} to build the services: {error}"))?;
    if !status.success() {
        return Err(format!(
            "`cargo build --bins -p command-service -p query-service` failed ({status}); see its output above"
        ));
    }
    for binary in [Binary::CommandService, Binary::QueryService] {
        if !binary.path().is_file() {
            return Err(format!("{} was not built", binary.path().display()));
        }
    }
    eprintln!("services built in {:.1?}", started.elapsed());
    Ok(())
}
