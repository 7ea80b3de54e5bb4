//! The listener spec grammar: `NAME=KIND:ADDRESS[,OPTION]...`.
//!
//! ```text
//! spec     = name "=" kind ":" address *( "," option )
//! kind     = "tcp" | "udp" | "unix" | "unix-dgram"
//! address  = ipv4 ":" port | "[" ipv6 "]" ":" port      ; tcp, udp
//!          | "/" path | "@" abstract-name                ; unix, unix-dgram
//! option   = "backlog=" count                            ; tcp, unix
//!          | "reuseport" | "freebind"                    ; tcp, udp
//!          | "v6only"                                    ; tcp, udp on an IPv6 address
//!          | "mode=" octal                               ; unix on a path
//!          | "owner=" user | "group=" group              ; unix on a path (name or number)
//!          | "nonblocking"                               ; any: O_NONBLOCK, as systemd's NonBlocking=
//! ```
//!
//! The name follows systemd's `FDNAME=` rules (1–255 printable ASCII
//! characters, no `:`). Ports are 1–65535: port 0 would give a different port at
//! every start. Host names are not accepted, only addresses. A Unix path must be
//! absolute and may not contain `,`.
//!
//! Examples:
//!
//! ```text
//! web=tcp:0.0.0.0:8080
//! web6=tcp:[::]:8080,v6only,backlog=1024,reuseport
//! dns=udp:127.0.0.1:5353,freebind
//! api=unix:/run/app/api.sock,mode=0660,group=www-data
//! ctl=unix:@app-control
//! log=unix-dgram:/run/app/log.sock
//! ```

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::PathBuf;
use std::str::FromStr;

use crate::name::check_fd_name;

/// The longest Unix socket path or abstract name (`sun_path` less the final
/// NUL).
const UNIX_PATH_MAX: usize = 107;

/// The transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TCP listener.
    Tcp,
    /// A UDP socket.
    Udp,
    /// A Unix stream listener.
    UnixStream,
    /// A Unix datagram socket.
    UnixDatagram,
}

impl Transport {
    fn keyword(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::UnixStream => "unix",
            Transport::UnixDatagram => "unix-dgram",
        }
    }

    fn is_inet(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Udp)
    }

    fn is_stream(self) -> bool {
        matches!(self, Transport::Tcp | Transport::UnixStream)
    }

    fn example(self) -> &'static str {
        match self {
            Transport::Tcp => "web=tcp:127.0.0.1:8080",
            Transport::Udp => "dns=udp:[::1]:5353",
            Transport::UnixStream => "api=unix:/run/app/api.sock,mode=0660",
            Transport::UnixDatagram => "log=unix-dgram:/run/app/log.sock",
        }
    }
}

/// Where a listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// An IPv4 or IPv6 address and port.
    Inet(SocketAddr),
    /// A Unix socket path.
    Path(PathBuf),
    /// A Unix abstract-namespace name (without the leading `@`).
    Abstract(String),
}

/// Socket options of a listener spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// `listen(2)` backlog; the kernel caps it at `net.core.somaxconn`.
    pub backlog: Option<u32>,
    /// `SO_REUSEPORT`.
    pub reuseport: bool,
    /// `IP_FREEBIND` / `IPV6_FREEBIND`: bind an address not (yet) on the host.
    pub freebind: bool,
    /// `IPV6_V6ONLY`: an IPv6 socket that does not accept IPv4 too.
    pub v6only: bool,
    /// The permission bits of a Unix socket file.
    pub mode: Option<u32>,
    /// The owner of a Unix socket file (a user name or number).
    pub owner: Option<String>,
    /// The group of a Unix socket file (a group name or number).
    pub group: Option<String>,
    /// `O_NONBLOCK` on the socket (systemd's `NonBlocking=`), for programs
    /// that take a listener as it is and accept without waiting for it to
    /// be readable (nginx does with a socket it inherits). Set when the
    /// listener is created and on a passed one whose spec says so; never
    /// cleared, since every generation shares the flag (clearing it under a
    /// draining program that relies on it would block it in `accept`).
    pub nonblocking: bool,
}

/// A parsed `NAME=KIND:ADDRESS[,OPTION]...` listener spec.
///
/// ```
/// use fdstore::{ListenerSpec, Transport};
///
/// let spec: ListenerSpec = "web=tcp:[::]:8080,v6only,backlog=1024".parse()?;
/// assert_eq!(spec.name(), "web");
/// assert_eq!(spec.transport(), Transport::Tcp);
/// assert_eq!(spec.options().backlog, Some(1024));
/// assert_eq!(spec.to_string(), "web=tcp:[::]:8080,backlog=1024,v6only");
/// # Ok::<(), fdstore::SpecError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    name: String,
    transport: Transport,
    endpoint: Endpoint,
    options: Options,
}

/// A listener spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The whole spec as given.
    pub input: String,
    /// The part of it that is wrong.
    pub part: String,
    /// What is wrong with that part.
    pub problem: String,
    /// A valid spec of the same kind.
    pub example: &'static str,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid listener spec {:?}: {:?}: {} (a valid one: {})",
            self.input, self.part, self.problem, self.example
        )
    }
}

impl std::error::Error for SpecError {}

const GENERIC_EXAMPLE: &str = "web=tcp:127.0.0.1:8080";

impl ListenerSpec {
    /// Parses a spec; see [`ListenerSpec`] for the grammar.
    pub fn parse(input: &str) -> Result<ListenerSpec, SpecError> {
        Parser { input }.parse()
    }

    /// The descriptor name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Where it binds.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Its options.
    pub fn options(&self) -> &Options {
        &self.options
    }
}

impl FromStr for ListenerSpec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ListenerSpec::parse(s)
    }
}

impl fmt::Display for ListenerSpec {
    /// The canonical form, which parses back to the same spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}:", self.name, self.transport.keyword())?;
        match &self.endpoint {
            Endpoint::Inet(addr) => write!(f, "{addr}")?,
            Endpoint::Path(path) => write!(f, "{}", path.display())?,
            Endpoint::Abstract(name) => write!(f, "@{name}")?,
        }
        let o = &self.options;
        if let Some(backlog) = o.backlog {
            write!(f, ",backlog={backlog}")?;
        }
        for (set, word) in [
            (o.reuseport, "reuseport"),
            (o.freebind, "freebind"),
            (o.v6only, "v6only"),
            (o.nonblocking, "nonblocking"),
        ] {
            if set {
                write!(f, ",{word}")?;
            }
        }
        if let Some(mode) = o.mode {
            write!(f, ",mode={mode:04o}")?;
        }
        if let Some(owner) = &o.owner {
            write!(f, ",owner={owner}")?;
        }
        if let Some(group) = &o.group {
            write!(f, ",group={group}")?;
        }
        Ok(())
    }
}

struct Parser<'a> {
    input: &'a str,
}

impl Parser<'_> {
    fn error(&self, part: &str, problem: impl Into<String>, example: &'static str) -> SpecError {
        SpecError {
            input: self.input.to_owned(),
            part: part.to_owned(),
            problem: problem.into(),
            example,
        }
    }

    fn parse(&self) -> Result<ListenerSpec, SpecError> {
        let Some((name, rest)) = self.input.split_once('=') else {
            return Err(self.error(
                self.input,
                "expected NAME=KIND:ADDRESS, with a name for the descriptor first",
                GENERIC_EXAMPLE,
            ));
        };
        check_fd_name(name).map_err(|problem| self.error(name, problem, GENERIC_EXAMPLE))?;
        let Some((kind, rest)) = rest.split_once(':') else {
            return Err(self.error(
                rest,
                "expected KIND:ADDRESS, where KIND is tcp, udp, unix or unix-dgram",
                GENERIC_EXAMPLE,
            ));
        };
        let transport = match kind {
            "tcp" => Transport::Tcp,
            "udp" => Transport::Udp,
            "unix" => Transport::UnixStream,
            "unix-dgram" => Transport::UnixDatagram,
            _ => {
                return Err(self.error(
                    kind,
                    "unknown kind; use tcp, udp, unix or unix-dgram",
                    GENERIC_EXAMPLE,
                ))
            }
        };
        let mut parts = rest.split(',');
        let address = parts.next().unwrap_or_default();
        let endpoint = if transport.is_inet() {
            Endpoint::Inet(self.inet_address(address, transport)?)
        } else {
            self.unix_address(address, transport)?
        };
        let mut options = Options::default();
        let mut seen: Vec<&str> = Vec::new();
        for option in parts {
            let key = option.split_once('=').map_or(option, |(k, _)| k);
            if seen.contains(&key) {
                return Err(self.error(option, "option given twice", transport.example()));
            }
            seen.push(key);
            self.option(option, transport, &endpoint, &mut options)?;
        }
        Ok(ListenerSpec {
            name: name.to_owned(),
            transport,
            endpoint,
            options,
        })
    }

    fn inet_address(&self, address: &str, transport: Transport) -> Result<SocketAddr, SpecError> {
        let example = transport.example();
        let (host, port) = if let Some(rest) = address.strip_prefix('[') {
            let Some((host, port)) = rest.split_once("]:") else {
                return Err(self.error(
                    address,
                    "an IPv6 address is written [ADDRESS]:PORT",
                    "web=tcp:[::]:8080",
                ));
            };
            let ip: Ipv6Addr = host
                .parse()
                .map_err(|_| self.error(host, "not an IPv6 address", "web=tcp:[::1]:8080"))?;
            (std::net::IpAddr::V6(ip), port)
        } else {
            let Some((host, port)) = address.rsplit_once(':') else {
                return Err(self.error(address, "expected ADDRESS:PORT", example));
            };
            if host.contains(':') {
                return Err(self.error(
                    address,
                    "put an IPv6 address in brackets: [ADDRESS]:PORT",
                    "web=tcp:[::]:8080",
                ));
            }
            let ip: Ipv4Addr = host.parse().map_err(|_| {
                let problem = if host.is_empty() || host == "*" {
                    "an address is required: 0.0.0.0 for every IPv4 address, [::] for every address".to_owned()
                } else if host.chars().any(|c| c.is_ascii_alphabetic()) {
                    "not an IP address; listeners bind to addresses, not host names (127.0.0.1, [::1], 0.0.0.0, [::])".to_owned()
                } else {
                    "not an IPv4 address".to_owned()
                };
                self.error(host, problem, example)
            })?;
            (std::net::IpAddr::V4(ip), port)
        };
        let port: u16 = match port.parse::<u32>() {
            Ok(0) => {
                return Err(self.error(
                    port,
                    "port 0 would bind a different port at every start; give a fixed port",
                    example,
                ))
            }
            Ok(p) if p <= 65535 => p as u16,
            Ok(_) => return Err(self.error(port, "port out of range 1-65535", example)),
            Err(_) => return Err(self.error(port, "not a port number", example)),
        };
        Ok(match host {
            std::net::IpAddr::V4(ip) => SocketAddr::from((ip, port)),
            std::net::IpAddr::V6(ip) => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)),
        })
    }

    fn unix_address(&self, address: &str, transport: Transport) -> Result<Endpoint, SpecError> {
        let example = transport.example();
        if address.contains('\0') {
            return Err(self.error(address, "a NUL byte is not allowed", example));
        }
        if let Some(name) = address.strip_prefix('@') {
            if name.is_empty() {
                return Err(self.error(
                    address,
                    "an abstract name is required after '@'",
                    "ctl=unix:@app-control",
                ));
            }
            if name.len() > UNIX_PATH_MAX - 1 {
                return Err(self.error(
                    address,
                    format!("an abstract name has at most {} bytes", UNIX_PATH_MAX - 1),
                    "ctl=unix:@app-control",
                ));
            }
            return Ok(Endpoint::Abstract(name.to_owned()));
        }
        if !address.starts_with('/') {
            return Err(self.error(
                address,
                "a Unix socket is an absolute path or an abstract name starting with '@'",
                example,
            ));
        }
        if address.len() > UNIX_PATH_MAX {
            return Err(self.error(
                address,
                format!("a Unix socket path has at most {UNIX_PATH_MAX} bytes"),
                example,
            ));
        }
        if address.ends_with('/') {
            return Err(self.error(address, "the path names a directory", example));
        }
        Ok(Endpoint::Path(PathBuf::from(address)))
    }

    fn option(
        &self,
        option: &str,
        transport: Transport,
        endpoint: &Endpoint,
        options: &mut Options,
    ) -> Result<(), SpecError> {
        let example = transport.example();
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (option, None),
        };
        let only_for = |what: &str| -> SpecError {
            self.error(
                option,
                format!("this option applies only to {what}"),
                example,
            )
        };
        let flag = |value: Option<&str>| -> Result<bool, SpecError> {
            match value {
                None => Ok(true),
                Some(_) => Err(self.error(option, "this option takes no value", example)),
            }
        };
        let needs_value = || self.error(option, "this option needs a value: KEY=VALUE", example);
        match key {
            "backlog" => {
                if !transport.is_stream() {
                    return Err(only_for("stream listeners (tcp, unix)"));
                }
                let value = value.ok_or_else(needs_value)?;
                match value.parse::<u32>() {
                    Ok(n) if (1..=i32::MAX as u32).contains(&n) => options.backlog = Some(n),
                    _ => return Err(self.error(option, "the backlog is a count of at least 1", example)),
                }
            }
            "reuseport" => {
                if !transport.is_inet() {
                    return Err(only_for("tcp and udp"));
                }
                options.reuseport = flag(value)?;
            }
            "freebind" => {
                if !transport.is_inet() {
                    return Err(only_for("tcp and udp"));
                }
                options.freebind = flag(value)?;
            }
            "v6only" => {
                if !matches!(endpoint, Endpoint::Inet(SocketAddr::V6(_))) {
                    return Err(only_for("IPv6 addresses ([ADDRESS]:PORT)"));
                }
                options.v6only = flag(value)?;
            }
            "mode" => {
                if !matches!(endpoint, Endpoint::Path(_)) {
                    return Err(only_for("Unix sockets on a path"));
                }
                let value = value.ok_or_else(needs_value)?;
                match u32::from_str_radix(value, 8) {
                    Ok(mode) if mode <= 0o7777 && !value.is_empty() => options.mode = Some(mode),
                    _ => {
                        return Err(self.error(
                            option,
                            "the mode is an octal number such as 0660",
                            example,
                        ))
                    }
                }
            }
            "nonblocking" => options.nonblocking = flag(value)?,
            "owner" | "group" => {
                if !matches!(endpoint, Endpoint::Path(_)) {
                    return Err(only_for("Unix sockets on a path"));
                }
                let value = value.ok_or_else(needs_value)?;
                if value.is_empty() {
                    return Err(needs_value());
                }
                if key == "owner" {
                    options.owner = Some(value.to_owned());
                } else {
                    options.group = Some(value.to_owned());
                }
            }
            _ => {
                return Err(self.error(
                    option,
                    "unknown option; known: backlog=N, reuseport, freebind, v6only, nonblocking, mode=OCTAL, owner=USER, group=GROUP (a ',' cannot appear in a path)",
                    example,
                ))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> ListenerSpec {
        ListenerSpec::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> SpecError {
        ListenerSpec::parse(s).expect_err(s)
    }

    #[test]
    fn tcp_ipv4_and_ipv6() {
        let s = ok("web=tcp:127.0.0.1:8080");
        assert_eq!(s.transport(), Transport::Tcp);
        assert_eq!(
            s.endpoint(),
            &Endpoint::Inet("127.0.0.1:8080".parse().unwrap())
        );
        let s = ok("web=tcp:[::]:80,v6only");
        assert_eq!(s.endpoint(), &Endpoint::Inet("[::]:80".parse().unwrap()));
        assert!(s.options().v6only);
        assert!(!ok("web=tcp:[::1]:80").options().v6only);
    }

    #[test]
    fn udp_and_unix_forms() {
        assert_eq!(ok("d=udp:0.0.0.0:53,freebind").transport(), Transport::Udp);
        let s = ok("api=unix:/run/app/api.sock,mode=0660,owner=root,group=0,backlog=16");
        assert_eq!(s.endpoint(), &Endpoint::Path("/run/app/api.sock".into()));
        assert_eq!(s.options().mode, Some(0o660));
        assert_eq!(s.options().owner.as_deref(), Some("root"));
        assert_eq!(s.options().group.as_deref(), Some("0"));
        assert_eq!(s.options().backlog, Some(16));
        assert_eq!(
            ok("c=unix:@ctl").endpoint(),
            &Endpoint::Abstract("ctl".into())
        );
        assert_eq!(
            ok("l=unix-dgram:/run/l.sock").transport(),
            Transport::UnixDatagram
        );
    }

    #[test]
    fn nonblocking_applies_to_every_kind_and_takes_no_value() {
        for s in [
            "w=tcp:127.0.0.1:80,nonblocking",
            "d=udp:127.0.0.1:53,nonblocking",
            "a=unix:@a,nonblocking",
            "l=unix-dgram:/run/l.sock,nonblocking",
        ] {
            assert!(ok(s).options().nonblocking, "{s}");
        }
        assert!(!ok("w=tcp:127.0.0.1:80").options().nonblocking);
        let e = err("w=tcp:127.0.0.1:80,nonblocking=1");
        assert!(e.to_string().contains("takes no value"), "{e}");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "web=tcp:127.0.0.1:8080",
            "web=tcp:[::]:8080,backlog=1024,reuseport,freebind,v6only",
            "web=tcp:[::]:8080,backlog=1024,v6only,nonblocking",
            "api=unix:/run/a.sock,backlog=5,mode=0600,owner=www-data,group=www-data",
            "api=unix:/run/a.sock,nonblocking,mode=0600",
            "c=unix:@ctl",
            "d=udp:[::1]:53,reuseport",
        ] {
            assert_eq!(ok(s).to_string(), s);
            assert_eq!(ok(&ok(s).to_string()), ok(s));
        }
    }

    #[test]
    fn errors_quote_the_bad_part_and_show_an_example() {
        let cases: &[(&str, &str, &str)] = &[
            ("tcp:127.0.0.1:80", "tcp:127.0.0.1:80", "NAME=KIND:ADDRESS"),
            ("a:b=tcp:127.0.0.1:80", "a:b", "':'"),
            ("=tcp:127.0.0.1:80", "", "empty"),
            ("web=tpc:127.0.0.1:80", "tpc", "unknown kind"),
            ("web=127.0.0.1", "127.0.0.1", "KIND:ADDRESS"),
            ("web=tcp:localhost:80", "localhost", "host names"),
            ("web=tcp:*:80", "*", "0.0.0.0"),
            ("web=tcp::80", "", "address is required"),
            ("web=tcp:1.2.3:80", "1.2.3", "IPv4"),
            ("web=tcp:::1:80", "::1:80", "brackets"),
            ("web=tcp:[::1]80", "[::1]80", "[ADDRESS]:PORT"),
            ("web=tcp:[zz]:80", "zz", "IPv6"),
            ("web=tcp:127.0.0.1:0", "0", "port 0"),
            ("web=tcp:127.0.0.1:65536", "65536", "1-65535"),
            ("web=tcp:127.0.0.1:http", "http", "port number"),
            ("web=tcp:127.0.0.1", "127.0.0.1", "ADDRESS:PORT"),
            ("web=tcp:127.0.0.1:80,backlog=0", "backlog=0", "at least 1"),
            ("web=tcp:127.0.0.1:80,backlog", "backlog", "needs a value"),
            (
                "web=tcp:127.0.0.1:80,reuseport=1",
                "reuseport=1",
                "no value",
            ),
            ("web=tcp:127.0.0.1:80,v6only", "v6only", "IPv6"),
            (
                "web=tcp:127.0.0.1:80,mode=0600",
                "mode=0600",
                "Unix sockets on a path",
            ),
            ("web=tcp:127.0.0.1:80,fast", "fast", "unknown option"),
            (
                "web=tcp:127.0.0.1:80,reuseport,reuseport",
                "reuseport",
                "twice",
            ),
            ("d=udp:127.0.0.1:53,backlog=5", "backlog=5", "stream"),
            ("a=unix:run/a.sock", "run/a.sock", "absolute path"),
            ("a=unix:/run/", "/run/", "directory"),
            ("a=unix:@", "@", "abstract name"),
            ("a=unix:/run/a.sock,mode=999", "mode=999", "octal"),
            ("a=unix:/run/a.sock,mode=", "mode=", "octal"),
            ("a=unix:/run/a.sock,owner=", "owner=", "needs a value"),
            ("a=unix:@x,mode=0600", "mode=0600", "on a path"),
            ("a=unix:/run/a.sock,reuseport", "reuseport", "tcp and udp"),
            ("a=unix:/run/a,b.sock", "b.sock", "unknown option"),
        ];
        for (input, part, problem) in cases {
            let e = err(input);
            assert_eq!(&e.part, part, "{input}: {e}");
            assert!(e.problem.contains(problem), "{input}: {e}");
            let text = e.to_string();
            assert!(text.contains(&format!("{input:?}")), "{text}");
            assert!(text.contains("a valid one: "), "{text}");
            ListenerSpec::parse(e.example).expect("every example is valid");
        }
    }

    #[test]
    fn long_paths_and_names_are_refused() {
        let long = format!("a=unix:/{}", "x".repeat(107));
        assert!(err(&long).problem.contains("107"));
        assert!(ListenerSpec::parse(&format!("a=unix:/{}", "x".repeat(106))).is_ok());
        let name = "n".repeat(256);
        assert!(err(&format!("{name}=tcp:127.0.0.1:1"))
            .problem
            .contains("255"));
    }
}
