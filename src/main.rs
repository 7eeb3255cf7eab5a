//! menet: a dynamic TCP tunnel proxy. Starts with two listen addresses (the admin API and the tunnel
//! port); tunnels, services and binds are created at runtime through the admin API.

mod api;
mod config;

use std::process::ExitCode;

use actix_web::{App, HttpServer};
use clap::Parser;
use log::{error, info};
use thiserror::Error;

use config::{Cli, Config, ConfigError};

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
    #[error("admin API server failed: {0}")]
    Server(std::io::Error),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    raise_fd_limit();
    let result = Config::load(&cli)
        .map_err(StartError::from)
        .and_then(|config| actix_rt::System::new().block_on(run(config)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), StartError> {
    let tunnel_port =
        menet_actors::listener::bind(config.tunnel).map_err(|source| StartError::TunnelPort {
            addr: config.tunnel,
            source,
        })?;
    let tunnel_addr = tunnel_port.local_addr().unwrap_or(config.tunnel);
    let registry = menet_actors::start(config.settings, tunnel_port);
    let server =
        HttpServer::new(move || App::new().configure(|c| api::routes(c, registry.clone())))
            .workers(1)
            .shutdown_timeout(1)
            .bind(config.admin)
            .map_err(|source| StartError::AdminPort {
                addr: config.admin,
                source,
            })?;
    let admin_addr = server.addrs().first().copied().unwrap_or(config.admin);
    info!("tunnel port listening on {tunnel_addr}");
    info!("admin API listening on {admin_addr}");
    server.run().await.map_err(StartError::Server)
}

/// Every connection costs a descriptor or two: lift the soft limit to the hard one, as servers do.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                log::warn!("cannot raise the open-file limit");
            }
        }
    }
}
