//! The Registry's admin commands tested alone: the actor on an actix system of its own, driven by
//! its messages, with no admin API, no peer and no state file (only its tunnel port is a socket).

use super::*;
use serde_json::Value;

/// Runs `f` against a fresh Registry with the default settings and no data threads.
fn with_registry<F, Fut>(f: F)
where
    F: FnOnce(Addr<Registry>, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    actix_rt::System::new().block_on(async move {
        let port = listener::bind("127.0.0.1:0".parse().expect("addr")).expect("tunnel port");
        let own = port.local_addr();
        let setup = NodeSetup {
            settings: Settings::default(),
            access: Access::default(),
            fd_limit: 1024,
            threads: 0,
            busy_poll: std::time::Duration::ZERO,
        };
        let registry = Registry::new(setup, port, None, None).start();
        f(registry, own).await;
    });
}

fn remote(name: &str, port: u16) -> AddService {
    AddService(ServiceSpec::plain(
        name,
        Side::Remote,
        SocketAddr::from(([127, 0, 0, 1], port)),
        Some("k".to_owned()),
        None,
    ))
}

fn bind(tunnel: &str, service: &str, bound: bool) -> SetBind {
    SetBind {
        tunnel: tunnel.to_owned(),
        service: service.to_owned(),
        side: Side::Remote,
        bound,
    }
}

async fn config(r: &Addr<Registry>) -> Value {
    let view = r
        .send(GetConfig(ConfigFilter::default()))
        .await
        .expect("config");
    serde_json::to_value(view).expect("a view serializes")
}

#[test]
fn services_and_binds_are_kept_and_shown_and_a_deleted_service_takes_its_bind() {
    with_registry(|r, _| async move {
        assert_eq!(r.send(remote("web", 8080)).await.expect("send"), Ok(()));
        // A bind may name a tunnel that does not exist yet.
        assert_eq!(r.send(bind("t1", "web", true)).await.expect("send"), Ok(()));
        let c = config(&r).await;
        assert_eq!(
            c["services"]["remote"]["web"]["key"], "***",
            "never the key"
        );
        assert_eq!(c["services"]["remote"]["web"]["cipher"], "rc4");
        assert_eq!(c["bind"]["remote"]["web"], "t1");
        let gone = DeleteService {
            name: "web".into(),
            side: Side::Remote,
        };
        assert_eq!(r.send(gone).await.expect("send"), Ok(()));
        let c = config(&r).await;
        assert!(c["services"]["remote"]["web"].is_null());
        assert!(
            c["bind"]["remote"]["web"].is_null(),
            "the bind went with it"
        );
    });
}

#[test]
fn refusals_name_what_is_wrong_and_change_nothing() {
    with_registry(|r, own| async move {
        let e = r.send(bind("t1", "nope", true)).await.expect("send");
        assert!(
            matches!(e, Err(AdminError::NotFound(ref m)) if m.contains("nope")),
            "{e:?}"
        );
        let gone = DeleteService {
            name: "nope".into(),
            side: Side::Local,
        };
        assert!(matches!(
            r.send(gone).await.expect("send"),
            Err(AdminError::NotFound(_))
        ));
        // This node's own tunnel port, spelt as the unspecified address.
        let own_port = AddTunnel {
            name: "me".into(),
            role: Role::Dialer,
            dest: Some(SocketAddr::from(([0, 0, 0, 0], own.port()))),
            secret: None,
            peer_identity: None,
        };
        let e = r.send(own_port).await.expect("send");
        assert!(
            matches!(e, Err(AdminError::Invalid(ref m)) if m.contains("own tunnel port")),
            "{e:?}"
        );
        let c = config(&r).await;
        assert!(
            c["tunnels"].as_object().is_some_and(|t| t.is_empty()),
            "{c}"
        );
    });
}

#[test]
fn a_declared_name_is_accepted_here_and_cannot_also_be_dialled() {
    with_registry(|r, _| async move {
        let declare = AddTunnel {
            name: "hub".into(),
            role: Role::Acceptor,
            dest: None,
            secret: Some("s3cret".into()),
            peer_identity: None,
        };
        assert_eq!(r.send(declare).await.expect("send"), Ok(()));
        let c = config(&r).await;
        assert_eq!(c["accepted"]["hub"]["declared"], true);
        assert_eq!(c["accepted"]["hub"]["secret"], "***");
        let dial = AddTunnel {
            name: "hub".into(),
            role: Role::Dialer,
            dest: Some(SocketAddr::from(([127, 0, 0, 1], 9))),
            secret: None,
            peer_identity: None,
        };
        let e = r.send(dial).await.expect("send");
        assert!(matches!(e, Err(AdminError::Conflict(_))), "{e:?}");
        let forget = DeleteTunnel { name: "hub".into() };
        assert_eq!(r.send(forget).await.expect("send"), Ok(()));
        assert!(config(&r).await["accepted"]["hub"].is_null());
    });
}
