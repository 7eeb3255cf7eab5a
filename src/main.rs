//! menet: a dynamic TCP tunnel proxy. Starts with two listen addresses (the admin API and the tunnel
//! port); tunnels, services and binds are created at runtime through the admin API.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use clap::Parser;
use log::{error, info, warn};
use menet_actors::registry::{GetReadiness, Registry, Shutdown};
use menet_actors::state::{StateError, StateStore};
use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};

use menet::api;
use menet::config::{Cli, Config, ConfigError};

#[derive(Debug, Error)]
enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen for tunnels on {addr}: {source}")]
    TunnelPort {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen for the admin API on {addr}: {source}")]
    AdminPort {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot watch for signals: {0}")]
    Signals(std::io::Error),
    #[error("admin API server failed: {0}")]
    Server(std::io::Error),
    #[error("admin API server stopped")]
    ServerGone,
    #[error("the registry actor died (it panicked); exiting so that a supervisor restarts the node from its state file")]
    RegistryLost,
    #[error("the admin API would listen on {0} with no token: set [admin] token (or token_file, or MENET_ADMIN_TOKEN), or allow_insecure_admin = true")]
    InsecureAdmin(std::net::SocketAddr),
}

fn main() -> ExitCode {
    menet::logfmt::init();
    // A panic is caught where its actor's task ends and the node goes on; log it like any error.
    std::panic::set_hook(Box::new(|info| {
        let trace = std::backtrace::Backtrace::capture();
        match trace.status() {
            std::backtrace::BacktraceStatus::Captured => error!("panic: {info}\n{trace}"),
            _ => error!("panic: {info}"),
        }
    }));
    let cli = Cli::parse();
    if cli.check {
        return check(&cli);
    }
    if cli.dump_state {
        return dump_state(&cli);
    }
    let fd_limit = raise_fd_limit();
    keep_freed_memory();
    let result = Config::load(&cli)
        .inspect(|config| menet::logfmt::set_format(config.log_format))
        .map_err(StartError::from)
        .and_then(|config| actix_rt::System::new().block_on(run(config, fd_limit)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `menet --check`: the config file and the state file, read and checked, nothing bound.
fn check(cli: &Cli) -> ExitCode {
    let config = match Config::load(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("menet --check: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "config {}: good (admin API {}, tunnel port {}, tunnels {}, tunnel secret {}, admin token {})",
        cli.config.display(),
        config.admin,
        config.tunnel,
        if config.settings.encrypt {
            "sealed"
        } else {
            "clear unless the peer seals"
        },
        if config.access.secret.is_some() {
            "set"
        } else {
            "none"
        },
        if config.admin_access.token.is_some() {
            "set"
        } else {
            "none"
        },
    );
    if config.admin_access.token.is_none()
        && !config.admin.ip().is_loopback()
        && !config.allow_insecure_admin
    {
        eprintln!("menet --check: {}", StartError::InsecureAdmin(config.admin));
        return ExitCode::FAILURE;
    }
    if let Some(file) = &cli.desired {
        if !check_desired(file) {
            return ExitCode::FAILURE;
        }
    }
    let Some(path) = &config.state else {
        println!("no state file: runtime changes are not kept");
        return ExitCode::SUCCESS;
    };
    if let Err(e) = menet_actors::state::check_private(path) {
        // A directory not made yet is made by menet itself, privately.
        if !matches!(&e, StateError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
        {
            eprintln!("menet --check: {e}");
            return ExitCode::FAILURE;
        }
    }
    match StateStore::check(path) {
        Ok(None) => println!("state file {}: none yet (it is created on the first change)", path.display()),
        Ok(Some(s)) => println!(
            "state file {}: good ({} tunnels, {} local and {} remote services, {} binds, {} accepted names)",
            path.display(),
            s.tunnels.len(),
            s.services.local.len(),
            s.services.remote.len(),
            s.bind.local.len() + s.bind.remote.len(),
            s.accepted.len(),
        ),
        Err(e) => {
            eprintln!("menet --check: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// `menet --check --desired FILE`: the document as `PUT /config` would read it, offline (the
/// checks that need the running node, such as a `"***"` naming a key it holds, are its own).
fn check_desired(file: &std::path::Path) -> bool {
    let text = match std::fs::read(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("menet --check: {}: {e}", file.display());
            return false;
        }
    };
    match menet::api::desired::read(&text, menet_actors::registry::Parts::ALL) {
        Ok(d) => {
            let missing: Vec<String> = d
                .binds
                .iter()
                .flat_map(|(side, binds)| binds.keys().map(move |s| (*side, s)))
                .filter(|(side, s)| !d.services.iter().any(|x| x.side == *side && x.name == **s))
                .map(|(side, s)| format!("bind.{side}.{s}: there is no {side} service named {s}"))
                .collect();
            for m in &missing {
                eprintln!("menet --check: {}: {m}", file.display());
            }
            if missing.is_empty() {
                println!(
                    "desired {}: good ({} tunnels, {} declared names, {} services, {} binds)",
                    file.display(),
                    d.tunnels.len(),
                    d.accepted.len(),
                    d.services.len(),
                    d.binds.values().map(|b| b.len()).sum::<usize>()
                );
            }
            missing.is_empty()
        }
        Err(errors) => {
            for e in errors {
                eprintln!("menet --check: {}: {e}", file.display());
            }
            false
        }
    }
}

/// `menet --dump-state`: what the state file holds (snapshot and journal), as JSON on stdout.
fn dump_state(cli: &Cli) -> ExitCode {
    let state = Config::load(cli)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            c.state
                .ok_or_else(|| "no state file is configured".to_owned())
        })
        .and_then(|path| StateStore::check(&path).map_err(|e| e.to_string()));
    match state {
        Ok(state) => {
            let state = state.unwrap_or_else(menet_actors::state::State::new);
            match serde_json::to_string_pretty(&state) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("menet --dump-state: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("menet --dump-state: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Tells systemd (`Type=notify`) the node is ready once the Registry says every listener is
/// bound, then pings its watchdog from this event loop if one is set.
async fn notify_systemd(registry: Addr<Registry>) {
    use sd_notify::NotifyState;
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    loop {
        match registry.send(GetReadiness).await {
            Ok(Ok(())) => break,
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => return,
        }
    }
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready]) {
        warn!("cannot tell systemd the node is ready: {e}");
    }
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        let period = Duration::from_micros(usec / 2);
        loop {
            tokio::time::sleep(period).await;
            let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
        }
    }
}

/// Refuses an admin API open to the network without a token, and warns about what else a
/// configuration leaves exposed.
fn check_exposure(config: &Config) -> Result<(), StartError> {
    if config.admin_access.token.is_none() && !config.admin.ip().is_loopback() {
        if !config.allow_insecure_admin {
            return Err(StartError::InsecureAdmin(config.admin));
        }
        warn!(
            "the admin API listens on {} with no token (allow_insecure_admin): anyone who reaches it controls this node",
            config.admin
        );
    }
    if config.access.secret.is_none() && !config.tunnel.ip().is_loopback() {
        warn!(
            "no tunnel secret and the tunnel port listens on {}: any peer can claim a new tunnel name; set [tunnel] secret",
            config.tunnel
        );
    }
    if !config.settings.encrypt && !config.tunnel.ip().is_loopback() {
        warn!(
            "[tunnel] encrypt = false and the tunnel port listens on {}: this node's tunnels cross \
             the network in the clear (names, and the bytes of every service without a key) \
             unless the peer asks for sealing",
            config.tunnel
        );
    }
    Ok(())
}

async fn run(config: Config, fd_limit: usize) -> Result<(), StartError> {
    check_exposure(&config)?;
    let (store, restore) = match &config.state {
        Some(path) => {
            let (store, state) = StateStore::open_with(path, config.compact_bytes)?;
            info!(
                "state file {}{}",
                path.display(),
                if state.is_some() { "" } else { " (new)" }
            );
            (Some(store), state)
        }
        None => (None, None),
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    let tunnel_port =
        menet_actors::listener::bind(config.tunnel).map_err(|source| StartError::TunnelPort {
            addr: config.tunnel,
            source,
        })?;
    let tunnel_addr = tunnel_port.local_addr();
    let setup = menet_actors::NodeSetup {
        settings: config.settings,
        access: config.access.clone(),
        fd_limit,
        threads: config.threads,
        busy_poll: config.busy_poll,
    };
    let registry = menet_actors::start(setup, tunnel_port, store, restore);
    let routes = registry.clone();
    let samples = menet::events::Samples::start();
    let admin_access = web::Data::new(Arc::new(config.admin_access.clone()));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(admin_access.clone())
            .wrap(from_fn(api::guard))
            .wrap(from_fn(menet::ops::count_requests))
            .configure(|c| menet::app::routes(c, routes.clone(), samples.clone()))
    })
    .workers(1)
    // Inside the descriptor reserve: idle admin connections cannot use up the descriptors the
    // tunnel port needs (more wait in the kernel's backlog).
    .max_connections(config.settings.limits.max_admin_connections)
    .shutdown_timeout(1)
    .disable_signals()
    .bind(config.admin)
    .map_err(|source| StartError::AdminPort {
        addr: config.admin,
        source,
    })?;
    let admin_addr = server.addrs().first().copied().unwrap_or(config.admin);
    info!("tunnel port listening on {tunnel_addr}");
    info!("admin API listening on {admin_addr}");
    let server = server.run();
    let admin = server.handle();
    let mut server = actix_rt::spawn(server);
    actix_rt::spawn(notify_systemd(registry.clone()));
    let outcome = tokio::select! {
        _ = terminate.recv() => {
            info!("SIGTERM: shutting down");
            Ok(())
        }
        _ = interrupt.recv() => {
            info!("SIGINT: shutting down");
            Ok(())
        }
        done = &mut server => Err(match done {
            Ok(Err(e)) => StartError::Server(e),
            _ => StartError::ServerGone,
        }),
        () = registry_lost(&registry) => Err(StartError::RegistryLost),
    };
    // Admin first, so no change races the shutdown; then the engine says goodbye to its peers.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let began = Instant::now();
    admin.stop(true).await;
    if registry.send(Shutdown).await.is_ok() {
        info!("stopped in {} ms", began.elapsed().as_millis());
    }
    outcome
}

/// Resolves if the Registry actor is gone, which only a panic in it can cause.
async fn registry_lost(registry: &Addr<Registry>) {
    while registry.connected() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What glibc's allocator keeps of the memory freed at the top of a thread's heap before it
/// hands it back to the kernel. Its default (128 KiB, two frames) made a data thread give back
/// a frame's pages on nearly every frame it freed in bulk and fault them in again for the next:
/// up to 18,000 page faults a second on a node sending 5 Gbit/s, with an `madvise` call per
/// frame and TLB shoot-downs across its threads. With 2 MiB the faults stop (1 MiB did too);
/// past it the allocator trims as before.
const TRIM_THRESHOLD: i32 = 2 << 20;
/// Allocations up to this size come from the thread's heap, not a mapping of their own
/// (fixed: setting the trim threshold turns off glibc's adjustment of both).
const MMAP_THRESHOLD: i32 = 4 << 20;

/// Tunes glibc's allocator for a data path that frees and allocates frames of up to 64 KiB
/// all the time (see [`TRIM_THRESHOLD`]). Before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets the allocator's parameters; called before other threads run.
    let ok = unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            && libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    };
    if !ok {
        log::warn!("cannot tune the allocator's trim threshold");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// Every connection costs a descriptor or two: lift the soft limit to the hard one, as servers
/// do. Returns the limit in force, of which a reserve is kept for the admin API and tunnel port.
fn raise_fd_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let cur = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                log::warn!("cannot raise the open-file limit");
                lim.rlim_cur = cur;
            }
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}
