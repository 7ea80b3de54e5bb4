//! The control socket: status and reload requests.

use std::time::Instant;

use super::super::config::Mode;
use super::role::Role;
use super::shared::Shared;
use crate::protocol::control::{ControlConnection, Request};
use crate::reload::{Facts, Requester};

pub(super) fn on_control(shared: &mut Shared<'_>, role: Role) -> Role {
    let mut role = role;
    let served = match &mut role {
        Role::Successor(s) => s.control.service(Instant::now()),
        Role::Main(m) => m.control.service(Instant::now()),
        Role::Draining(_) => return role,
    };
    for (connection, request) in served {
        role = on_request(shared, role, connection, request);
    }
    role
}

fn on_request(
    shared: &mut Shared<'_>,
    role: Role,
    connection: ControlConnection,
    request: Result<Request, String>,
) -> Role {
    let own_cgroup = shared.own_cgroup.clone();
    let status = || match &role {
        Role::Successor(s) => s.status_text(shared),
        Role::Main(m) => m.status_text(shared),
        Role::Draining(_) => shared.status_text(true, None, None, ""),
    };
    let Some(connection) = connection.triage(request, own_cgroup.as_deref(), status) else {
        return role;
    };
    match role {
        Role::Main(main) => main.start_reload(shared, Requester::Client(connection)),
        Role::Successor(mut s) => {
            s.on_request(shared, connection);
            Role::Successor(s)
        }
        // Its control endpoint is closed: no request reaches it.
        Role::Draining(d) => Role::Draining(d),
    }
}

impl Shared<'_> {
    /// What the reload machine needs to know about a request.
    pub(super) fn facts(&self, main: bool) -> Facts {
        Facts {
            ready: self.generation.ready,
            main,
            unsupported: (self.config.mode == Mode::Restart).then(|| {
                "fdstore-exec runs with --mode=restart: listeners stay in the fd store across `systemctl restart`; reload by hand-over is off".to_owned()
            }),
        }
    }
}
