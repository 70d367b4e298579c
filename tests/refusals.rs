//! What a user sees when the system refuses something, and what its logs
//! say while it runs normally: every refusal reaches the client in its own
//! protocol (not only the node's log), and normal operation logs no alarms.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Sends `cmd` whole, as a client library does (it writes the command, then
/// reads the reply), and returns everything the node answered until it
/// closed the connection.
fn send_then_read(addr: &str, cmd: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // A client library that cannot write its command reports the reset,
    // not the node's reply: the node must take the command in, even when
    // it refuses it at the first bytes.
    s.write_all(cmd)
        .expect("the node reset the connection before the client could read why");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

#[test]
fn an_oversized_resp_value_is_refused_with_the_limit_before_the_connection_closes() {
    let c = Cluster::start("refusals-oversized", 1, default_settings());
    let resp = c.nodes[0].resp_addr.clone();
    // 32 MiB against the default max-value-bytes of 1 MiB: more than the
    // socket buffers hold, so the node refuses it while it still arrives.
    let value = vec![b'x'; 32 << 20];
    let reply = send_then_read(&resp, &resp_command(&[b"SET", b"big", &value]));
    assert!(
        reply.starts_with(
            "-ERR Protocol error: bulk length 33554432 exceeds the limit of 1048576 bytes\r\n"
        ),
        "the client must be told why: {reply:?}"
    );
    // Nothing was stored, and the node serves on.
    let mut cmds = resp_command(&[b"GET", b"big"]);
    cmds.extend(resp_command(&[b"QUIT"]));
    assert_eq!(send_then_read(&resp, &cmds), "$-1\r\n+OK\r\n");
}
