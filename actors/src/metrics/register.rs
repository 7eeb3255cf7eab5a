//! Registering every family of [`Metrics`] with the registry `GET /metrics` encodes: each
//! series' name, help text and kind, in one place.

use super::*;

/// Registers the per-tunnel series.
pub(super) fn register_tunnel_series(r: &mut Registry, m: &Metrics) {
    r.register(
        "tunnel_connected",
        "1 while the tunnel is connected, 0 while it re-dials or waits for its dialer",
        m.tunnel_connected.clone(),
    );
    r.register(
        "tunnel_sent_bytes",
        "DATA payload bytes sent to the peer",
        m.tunnel_sent.clone(),
    );
    r.register(
        "tunnel_received_bytes",
        "DATA payload bytes received from the peer",
        m.tunnel_received.clone(),
    );
    r.register(
        "tunnel_streams",
        "Streams open on the tunnel",
        m.tunnel_streams.clone(),
    );
    r.register(
        "tunnel_streams_opened",
        "Streams opened on the tunnel, by either end",
        m.tunnel_streams_opened.clone(),
    );
    r.register(
        "tunnel_redials",
        "Re-dials after the tunnel was lost or a dial failed",
        m.tunnel_redials.clone(),
    );
    r.register(
        "tunnel_integrity_failures",
        "Connections of the tunnel closed because a sealed record failed its check (changed, \
         replayed, dropped or reordered on the link)",
        m.tunnel_integrity_failures.clone(),
    );
    r.register(
        "tunnel_heartbeat_rtt_seconds",
        "Round trip of the last heartbeat (PING/PONG)",
        m.tunnel_rtt.clone(),
    );
    r.register(
        "tunnel_send_window_bytes",
        "Peer's tunnel credit not yet granted to a stream",
        m.tunnel_send_window.clone(),
    );
    r.register(
        "tunnel_queued_bytes",
        "Bytes queued in the tunnel, not yet written to its socket",
        m.tunnel_queued.clone(),
    );
    r.register(
        "tunnel_receive_window_bytes",
        "Tunnel window offered to the peer: what it may have in flight and unread towards us",
        m.tunnel_receive_window.clone(),
    );
    r.register(
        "tunnel_socket_unsent_bytes",
        "Tunnel socket's send queue in the kernel: written, not yet sent",
        m.tunnel_socket_unsent.clone(),
    );
    r.register(
        "tunnel_socket_unacked_bytes",
        "Tunnel socket's send queue in the kernel: sent, not yet acknowledged",
        m.tunnel_socket_unacked.clone(),
    );
    r.register(
        "tunnel_socket_unread_bytes",
        "Tunnel socket's receive queue in the kernel: received, not yet read",
        m.tunnel_socket_unread.clone(),
    );
    r.register(
        "tunnel_lanes",
        "Tunnel's TCP connections (lanes) now; 0 while it is down",
        m.tunnel_lanes.clone(),
    );
}

/// Registers the per-service, admin and state series.
pub(super) fn register_other_series(r: &mut Registry, m: &Metrics) {
    r.register(
        "service_connections_accepted",
        "Connections carried: clients accepted (local) or backends reached (remote)",
        m.service_accepted.clone(),
    );
    r.register(
        "service_connections_refused",
        "Connections refused, by reason",
        m.service_refused.clone(),
    );
    r.register(
        "unknown_service_connections_refused",
        "Connections refused for a service this node does not have (no name label: bounded)",
        m.unknown_service_refused.clone(),
    );
    r.register(
        "service_connections_active",
        "Connections of the service now",
        m.service_active.clone(),
    );
    r.register(
        "service_sent_bytes",
        "Bytes carried from the service's sockets into the tunnel (DATA payload)",
        m.service_sent.clone(),
    );
    r.register(
        "service_received_bytes",
        "Bytes carried from the tunnel to the service's sockets (DATA payload)",
        m.service_received.clone(),
    );
    r.register(
        "service_datagrams",
        "A UDP service's datagrams: carried into the tunnel, delivered out of it, dropped",
        m.service_datagrams.clone(),
    );
    r.register(
        "service_udp_flows",
        "A UDP service's flows (client addresses) now",
        m.service_udp_flows.clone(),
    );
    r.register(
        "service_throttled_seconds",
        "Seconds a service's connections waited for its bandwidth limit",
        m.service_throttled.clone(),
    );
    r.register(
        "backend_connections",
        "Streams connected to each address of a remote service",
        m.backend_connections.clone(),
    );
    r.register(
        "backend_failures",
        "Dials of each address of a remote service that failed (streams' and health checks')",
        m.backend_failures.clone(),
    );
    r.register(
        "admin_requests",
        "Admin API requests, by route pattern, method and status",
        m.admin_requests.clone(),
    );
    r.register(
        "state_writes",
        "State file writes (each fsynced)",
        m.state_writes.clone(),
    );
    r.register(
        "state_write_failures",
        "State file writes that failed",
        m.state_write_failures.clone(),
    );
    r.register(
        "busy_poll_rounds",
        "Rounds of busy polling by the data threads after a small read ([node] busy_poll_us)",
        crate::busy_poll::counts().rounds.clone(),
    );
    r.register(
        "busy_poll_seconds",
        "Time the data threads spent in rounds of busy polling, from the read that started each \
         to its end (the events handled meanwhile included; the CPU spent is at most this)",
        crate::busy_poll::counts().seconds.clone(),
    );
}
