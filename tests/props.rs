//! Property tests for every decoder: arbitrary and mutated bytes never panic,
//! encoding then decoding gives back the input, and a truncated (or, where a
//! tag or checksum protects it, tampered) frame, datagram or record is an
//! error, never a panic and never a wrong value. For RESP, a truncated
//! command is "need more bytes".
//!
//! The no-panic properties run the fuzz targets' harnesses
//! (`fuzz/src/lib.rs`, included below), so a fuzz finding and a failing
//! property here check the same thing. Fuzz findings are kept as files under
//! `fuzz/regressions/<target>/`, replayed by `fuzz_seeds_and_regressions`,
//! and as named tests at the end of this file.
//!
//! * `PROPTEST_CASES=n` changes the number of cases per property (256).
//! * `cargo test --test props -- --ignored write_fuzz_seed_corpus` rewrites
//!   the fuzz seed corpus `fuzz/corpus/` from the sample messages below.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod harness;

use dkv::auth::ClusterKey;
use dkv::config::{Config, NodeSettings};
use dkv::resp::{parse_command, Limits};
use dkv::storage::record::{self, BadRecord, Reader};
use dkv::storage::snapshot::SnapRecord;
use dkv::storage::wal::WalRecord;
use dkv::types::{Entry, LogPos, Op, Role};
use dkv::wire::{
    self, AuthStats, Beacon, ClusterView, ConnKind, ErrorKind, FollowRequest, Hello, HelloReply,
    MemberInfo, MemberReport, NodeStatus, Opener, Refusal, RejoinReport, ReplAck, ReplMsg, Request,
    Response, Sealer, ServerRequest, ServerResponse, WireError,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // Findings are kept as named tests and fuzz/regressions/ files
        // instead of a proptest-regressions file.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn pos() -> impl Strategy<Value = LogPos> {
    (any::<u64>(), any::<u64>()).prop_map(|(e, i)| LogPos::new(e, i))
}

fn role() -> impl Strategy<Value = Role> {
    prop::sample::select(vec![
        Role::Joining,
        Role::Replica,
        Role::Coordinator,
        Role::Candidate,
    ])
}

fn error_kind() -> impl Strategy<Value = ErrorKind> {
    prop::sample::select(vec![
        ErrorKind::BadRequest,
        ErrorKind::KeyTooLarge,
        ErrorKind::ValueTooLarge,
        ErrorKind::Unavailable,
        ErrorKind::NotEnoughReplicas,
        ErrorKind::Timeout,
        ErrorKind::TooManyConnections,
        ErrorKind::VersionMismatch,
        ErrorKind::StorageFailed,
        ErrorKind::AuthRequired,
        ErrorKind::AuthFailed,
        ErrorKind::OutOfMemory,
    ])
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (bytes(16), bytes(32)).prop_map(|(key, value)| Op::Put { key, value }),
        bytes(16).prop_map(|key| Op::Delete { key }),
        (bytes(16), bytes(32), any::<u64>()).prop_map(|(key, value, expires_at)| {
            Op::PutExpiring {
                key,
                value,
                expires_at,
            }
        }),
        vec((bytes(8), bytes(8)), 0..3).prop_map(|kv| Op::Batch(
            kv.into_iter()
                .map(|(key, value)| Op::Put { key, value })
                .collect()
        )),
        Just(Op::Flush),
    ]
}

fn pair() -> impl Strategy<Value = dkv::store::Pair> {
    (bytes(16), bytes(32), any::<Option<u64>>()).prop_map(|(key, value, expires_at)| {
        dkv::store::Pair {
            key,
            value,
            expires_at,
        }
    })
}

fn command() -> impl Strategy<Value = dkv::commands::Command> {
    use dkv::commands::{Command, Cond, SetExpiry, When};
    prop_oneof![
        (bytes(16), any::<i64>()).prop_map(|(key, by)| Command::IncrBy { key, by }),
        (bytes(16), bytes(16), any::<i64>()).prop_map(|(key, value, ms)| Command::Set {
            key,
            value,
            cond: Cond::Absent,
            expiry: SetExpiry::Set(When::In(ms)),
            get: true,
        }),
        (any::<u64>(), prop::option::of(bytes(8)), 0usize..100).prop_map(
            |(cursor, pattern, count)| Command::Scan {
                cursor,
                pattern,
                count,
                type_name: None,
            }
        ),
        vec(bytes(8), 0..3).prop_map(|keys| Command::Exec {
            watched: keys.iter().map(|k| (k.clone(), 7)).collect(),
            commands: keys.into_iter().map(|key| Command::Get { key }).collect(),
        }),
        Just(Command::Flush),
    ]
}

fn value() -> impl Strategy<Value = dkv::commands::Value> {
    use dkv::commands::Value;
    let leaf = prop_oneof![
        Just(Value::Ok),
        Just(Value::Nil),
        Just(Value::NilArray),
        any::<i64>().prop_map(Value::Int),
        bytes(16).prop_map(Value::Bulk),
        text().prop_map(Value::Error),
        text().prop_map(Value::Status),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| vec(inner, 0..4).prop_map(Value::Array))
}

fn entry() -> impl Strategy<Value = Entry> {
    (pos(), op()).prop_map(|(pos, op)| Entry { pos, op })
}

fn auth_stats() -> impl Strategy<Value = AuthStats> {
    (any::<bool>(), any::<[u64; 4]>()).prop_map(|(cluster_secret, n)| AuthStats {
        cluster_secret,
        forged_beacons: n[0],
        replayed_beacons: n[1],
        rejected_peers: n[2],
        failed_client_auth: n[3],
    })
}

fn node_status() -> impl Strategy<Value = NodeStatus> {
    (
        (any::<[u64; 3]>(), role(), any::<Option<u64>>()),
        (pos(), pos(), any::<[u64; 5]>(), auth_stats()),
    )
        .prop_map(
            |((a, role, coordinator), (last, applied, b, auth))| NodeStatus {
                node_id: a[0],
                incarnation: a[1],
                role,
                epoch: a[2],
                coordinator,
                last,
                commit: b[0],
                applied,
                digest: b[1],
                keys: b[2],
                used_memory: b[3],
                max_memory: b[4],
                auth,
            },
        )
}

fn follow_request() -> impl Strategy<Value = FollowRequest> {
    (any::<[u64; 3]>(), pos(), pos()).prop_map(|(n, last, committed)| FollowRequest {
        node_id: n[0],
        incarnation: n[1],
        epoch: n[2],
        last,
        committed,
    })
}

fn conn_kind() -> impl Strategy<Value = ConnKind> {
    prop_oneof![
        Just(ConnKind::Client),
        follow_request().prop_map(ConnKind::Follow),
        Just(ConnKind::Member),
    ]
}

fn hello() -> impl Strategy<Value = Hello> {
    (any::<u32>(), any::<u16>(), conn_kind(), any::<[u8; 16]>()).prop_map(
        |(magic, version, kind, nonce)| Hello {
            magic,
            version,
            kind,
            nonce,
        },
    )
}

fn hello_reply() -> impl Strategy<Value = HelloReply> {
    prop_oneof![
        (any::<[u8; 16]>(), any::<Option<[u8; 32]>>())
            .prop_map(|(nonce, proof)| HelloReply::Accept { nonce, proof }),
        (error_kind(), text()).prop_map(|(kind, message)| HelloReply::Refused { kind, message }),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        bytes(24).prop_map(|key| Request::Get { key }),
        (bytes(24), bytes(64)).prop_map(|(key, value)| Request::Put { key, value }),
        bytes(24).prop_map(|key| Request::Delete { key }),
        Just(Request::Status),
        bytes(24).prop_map(|password| Request::Auth { password }),
        command().prop_map(Request::Command),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        prop::option::of(bytes(64)).prop_map(Response::Value),
        Just(Response::Written),
        any::<bool>().prop_map(Response::Deleted),
        node_status().prop_map(Response::Status),
        (any::<u64>(), prop::option::of(text()))
            .prop_map(|(epoch, coordinator)| Response::NotCoordinator { epoch, coordinator }),
        (error_kind(), text()).prop_map(|(kind, message)| Response::Error { kind, message }),
        Just(Response::Authenticated),
        value().prop_map(Response::Reply),
    ]
}

fn repl_msg() -> impl Strategy<Value = ReplMsg> {
    prop_oneof![
        (any::<u64>(), pos()).prop_map(|(epoch, pos)| ReplMsg::SnapshotBegin { epoch, pos }),
        vec(pair(), 0..4).prop_map(|pairs| ReplMsg::SnapshotChunk { pairs }),
        any::<u64>().prop_map(|epoch| ReplMsg::SnapshotEnd { epoch }),
        (any::<u64>(), pos(), vec(entry(), 0..4), any::<u64>()).prop_map(
            |(epoch, prev, entries, commit)| ReplMsg::Append {
                epoch,
                prev,
                entries: entries.into_iter().map(Arc::new).collect(),
                commit,
            }
        ),
        (
            any::<u64>(),
            prop_oneof![
                Just(Refusal::NotCoordinator),
                Just(Refusal::OwnStream),
                Just(Refusal::Released),
                any::<u64>().prop_map(Refusal::NotMember),
                (any::<u64>(), any::<u64>()).prop_map(|(replica, coordinator)| {
                    Refusal::NewerEpoch {
                        replica,
                        coordinator,
                    }
                }),
            ]
        )
            .prop_map(|(epoch, why)| ReplMsg::Refused { epoch, why }),
    ]
}

fn repl_ack() -> impl Strategy<Value = ReplAck> {
    (any::<u64>(), pos(), any::<bool>()).prop_map(|(epoch, last, leaving)| ReplAck {
        epoch,
        last,
        leaving,
    })
}

fn member_report() -> impl Strategy<Value = MemberReport> {
    (any::<u64>(), role(), pos(), any::<u64>()).prop_map(|(node_id, role, applied, digest)| {
        MemberReport {
            node_id,
            role,
            applied,
            digest,
        }
    })
}

fn member_info() -> impl Strategy<Value = MemberInfo> {
    (
        (any::<[u64; 3]>(), text(), text(), prop::option::of(text())),
        (role(), any::<bool>(), pos(), any::<Option<u64>>()),
    )
        .prop_map(
            |((n, data_addr, beacon_addr, resp_addr), (role, in_sync, log_position, last))| {
                MemberInfo {
                    node_id: n[0],
                    incarnation: n[1],
                    data_addr,
                    beacon_addr,
                    resp_addr,
                    role,
                    in_sync,
                    log_position,
                    digest: n[2],
                    last_status_ms: last,
                }
            },
        )
}

fn cluster_view() -> impl Strategy<Value = ClusterView> {
    (
        any::<[u64; 2]>(),
        any::<Option<u64>>(),
        vec(any::<u64>(), 0..4),
        vec(member_info(), 0..3),
        auth_stats(),
    )
        .prop_map(|(n, coordinator, isr, members, auth)| ClusterView {
            epoch: n[0],
            coordinator,
            isr,
            isr_version: n[1],
            members,
            auth,
            recovery: None,
        })
}

fn server_request() -> impl Strategy<Value = ServerRequest> {
    prop_oneof![
        (
            any::<Option<u64>>(),
            any::<u64>(),
            text(),
            text(),
            pos(),
            prop::option::of(text())
        )
            .prop_map(
                |(node_id, incarnation, data_addr, beacon_addr, last, resp_addr)| {
                    ServerRequest::Register {
                        node_id,
                        incarnation,
                        data_addr,
                        beacon_addr,
                        last,
                        resp_addr,
                    }
                }
            ),
        Just(ServerRequest::WhoIsCoordinator),
        Just(ServerRequest::View),
        (any::<u64>(), any::<u64>(), vec(member_report(), 0..4)).prop_map(
            |(from, epoch, reports)| ServerRequest::Status {
                from,
                epoch,
                reports
            }
        ),
        (any::<u64>(), any::<u64>(), vec(any::<u64>(), 0..4))
            .prop_map(|(from, epoch, isr)| ServerRequest::SetIsr { from, epoch, isr }),
        (any::<u64>(), any::<u64>(), pos()).prop_map(|(candidate, epoch, last)| {
            ServerRequest::RequestGrant {
                candidate,
                epoch,
                last,
            }
        }),
        bytes(24).prop_map(|password| ServerRequest::Auth { password }),
        (
            any::<[u64; 3]>(),
            (text(), text(), prop::option::of(text())),
            role(),
            pos(),
            any::<bool>(),
            prop::option::of((any::<u64>(), vec(any::<u64>(), 0..4))),
            cluster_view()
        )
            .prop_map(
                |(
                    n,
                    (data_addr, beacon_addr, resp_addr),
                    role,
                    last,
                    holds_lease,
                    coordinated,
                    view,
                )| {
                    ServerRequest::Rejoin(Box::new(RejoinReport {
                        node_id: n[0],
                        incarnation: n[1],
                        data_addr,
                        beacon_addr,
                        resp_addr,
                        epoch: n[2],
                        role,
                        last,
                        holds_lease,
                        coordinated,
                        view,
                    }))
                }
            ),
    ]
}

fn server_response() -> impl Strategy<Value = ServerResponse> {
    prop_oneof![
        (any::<u64>(), cluster_view())
            .prop_map(|(node_id, view)| ServerResponse::Registered { node_id, view }),
        (any::<u64>(), any::<u64>(), text()).prop_map(|(epoch, node_id, addr)| {
            ServerResponse::Coordinator {
                epoch,
                node_id,
                addr,
            }
        }),
        any::<u64>().prop_map(|epoch| ServerResponse::NoCoordinator { epoch }),
        cluster_view().prop_map(ServerResponse::View),
        cluster_view().prop_map(ServerResponse::Ok),
        (any::<u64>(), text())
            .prop_map(|(epoch, reason)| ServerResponse::Rejected { epoch, reason }),
        (error_kind(), text()).prop_map(|(kind, message)| ServerResponse::Error { kind, message }),
        Just(ServerResponse::Authenticated),
        any::<u64>().prop_map(|epoch| ServerResponse::NotRegistered { epoch }),
    ]
}

fn beacon() -> impl Strategy<Value = Beacon> {
    (any::<[u64; 5]>(), role(), pos(), pos()).prop_map(|(n, role, last, applied)| Beacon {
        magic: wire::MAGIC,
        version: wire::PROTOCOL_VERSION,
        from: n[0],
        incarnation: n[1],
        epoch: n[2],
        role,
        last,
        applied,
        digest: n[3],
        seq: n[4],
    })
}

fn wal_record() -> impl Strategy<Value = WalRecord> {
    prop_oneof![
        pos().prop_map(|prev| WalRecord::SegmentStart { prev }),
        entry().prop_map(WalRecord::Entry),
        pos().prop_map(|to| WalRecord::Truncate { to }),
        any::<u64>().prop_map(WalRecord::Commit),
    ]
}

fn snap_record() -> impl Strategy<Value = SnapRecord> {
    prop_oneof![
        (any::<u32>(), any::<u16>(), pos()).prop_map(|(magic, version, pos)| {
            SnapRecord::Header {
                magic,
                version,
                pos,
            }
        }),
        vec((bytes(16), bytes(32)), 0..4).prop_map(SnapRecord::Pairs),
        any::<u64>().prop_map(|keys| SnapRecord::End { keys }),
    ]
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn client_max() -> usize {
    NodeSettings::default().max_client_frame()
}

fn repl_max() -> usize {
    NodeSettings::default().max_repl_frame()
}

/// The selector byte of the `frames` fuzz target for a message type.
fn frame_sel(ty: &str) -> u8 {
    harness::FRAME_TYPES
        .iter()
        .position(|t| *t == ty)
        .unwrap_or_else(|| panic!("{ty} is not a frames fuzz target type")) as u8
}

/// Each byte at an edit's index XORed with its (non-zero) value.
fn mutate(mut bytes: Vec<u8>, edits: &[(Index, u8)]) -> Vec<u8> {
    if !bytes.is_empty() {
        for (i, x) in edits {
            let k = i.index(bytes.len());
            bytes[k] ^= (*x).max(1);
        }
    }
    bytes
}

/// A stream of frames, and where each frame ends.
fn frame_stream<T: Serialize>(msgs: &[T]) -> (Vec<u8>, Vec<usize>) {
    let mut buf = Vec::new();
    let mut ends = Vec::new();
    for m in msgs {
        wire::encode_frame_into(&mut buf, m);
        ends.push(buf.len());
    }
    (buf, ends)
}

fn frames_round_trip<T>(msgs: &[T], max: usize) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let (buf, _) = frame_stream(msgs);
    let mut r = buf.as_slice();
    for m in msgs {
        let got: T =
            wire::read_frame(&mut r, max).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&got, m);
        // The bare body decodes too.
        prop_assert_eq!(&wire::decode::<T>(&wire::encode(m), max).unwrap(), m);
    }
    prop_assert!(matches!(
        wire::read_frame::<_, T>(&mut r, max),
        Err(WireError::Closed)
    ));
    Ok(())
}

/// A stream cut at `cut` yields exactly its whole frames, then an error:
/// `Closed` when fewer than 4 bytes of the next frame arrived, else
/// `Malformed` (truncated frame).
fn frames_truncated<T>(msgs: &[T], max: usize, cut: Index) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let (buf, ends) = frame_stream(msgs);
    let cut = cut.index(buf.len());
    let whole = ends.iter().filter(|&&e| e <= cut).count();
    let mut r = &buf[..cut];
    for m in &msgs[..whole] {
        let got: T =
            wire::read_frame(&mut r, max).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&got, m);
    }
    let start = if whole == 0 { 0 } else { ends[whole - 1] };
    let next = wire::read_frame::<_, T>(&mut r, max);
    if cut - start < 4 {
        prop_assert!(matches!(next, Err(WireError::Closed)), "{:?}", next);
    } else {
        prop_assert!(matches!(next, Err(WireError::Malformed(_))), "{:?}", next);
    }
    Ok(())
}

/// Every strict prefix of a message's body is refused.
fn body_truncations<T>(msg: &T, max: usize) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let body = wire::encode(msg);
    for cut in 0..body.len() {
        let got = wire::decode::<T>(&body[..cut], max);
        prop_assert!(
            got.is_err(),
            "{} of {} bytes decoded as {:?}",
            cut,
            body.len(),
            got
        );
    }
    Ok(())
}

fn session_key() -> dkv::auth::SessionKey {
    harness::fuzz_session_key()
}

/// Sealed frames read back in order; a tampered stream never yields a
/// message that was not sent at that place, and fails somewhere.
fn sealed_round_trip_and_tamper<T>(
    msgs: &[T],
    max: usize,
    edit: (Index, u8),
) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut tx = Sealer::new(Some(session_key()));
    let mut buf = Vec::new();
    for m in msgs {
        tx.frame_into(&mut buf, m);
    }
    let mut rx = Opener::new(Some(session_key()));
    let mut r = buf.as_slice();
    for m in msgs {
        let got: T = rx
            .read(&mut r, max)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&got, m);
    }
    prop_assert!(r.is_empty());

    let bad = mutate(buf, &[edit]);
    let mut rx = Opener::new(Some(session_key()));
    let mut r = bad.as_slice();
    let mut failed = false;
    for m in msgs {
        match rx.read::<_, T>(&mut r, max) {
            Ok(got) => prop_assert_eq!(&got, m),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    prop_assert!(failed, "a tampered sealed stream read back whole");

    // Frames of another session, or plain frames, are refused.
    let (plain, _) = frame_stream(msgs);
    let mut rx = Opener::new(Some(session_key()));
    prop_assert!(rx.read::<_, T>(&mut plain.as_slice(), max).is_err());
    Ok(())
}

macro_rules! message_props {
    ($module:ident, $ty:ident, $strategy:expr, $max:expr) => {
        mod $module {
            use super::*;

            proptest! {
                #![proptest_config(config())]

                #[test]
                fn frames_round_trip(msgs in vec($strategy, 1..4)) {
                    super::frames_round_trip::<$ty>(&msgs, $max)?;
                }

                #[test]
                fn truncated_stream_is_an_error(
                    msgs in vec($strategy, 1..4),
                    cut in any::<Index>(),
                ) {
                    frames_truncated::<$ty>(&msgs, $max, cut)?;
                }

                #[test]
                fn truncated_body_is_an_error(msg in $strategy) {
                    body_truncations::<$ty>(&msg, $max)?;
                }

                #[test]
                fn sealed_frames_round_trip_and_tampering_fails(
                    msgs in vec($strategy, 1..3),
                    edit in any::<(Index, u8)>(),
                ) {
                    sealed_round_trip_and_tamper::<$ty>(&msgs, $max, edit)?;
                }

                #[test]
                fn arbitrary_bytes_never_panic(plain in bytes(256), sealed in any::<bool>()) {
                    let framing = if sealed { harness::FRAME_SEALED } else { 0 };
                    let sel = frame_sel(stringify!($ty)) | framing;
                    harness::frames(&[&[sel][..], &plain].concat());
                }

                #[test]
                fn mutated_frames_never_panic(
                    msgs in vec($strategy, 1..3),
                    edits in vec(any::<(Index, u8)>(), 1..4),
                    bare in any::<bool>(),
                ) {
                    let sel = frame_sel(stringify!($ty));
                    let good = if bare { wire::encode(&msgs[0]) } else { frame_stream(&msgs).0 };
                    harness::frames(&[&[sel][..], &mutate(good, &edits)].concat());
                }
            }
        }
    };
}

message_props!(hello_frames, Hello, hello(), wire::MAX_HELLO_FRAME);
message_props!(
    hello_reply_frames,
    HelloReply,
    hello_reply(),
    wire::MAX_HELLO_FRAME
);
message_props!(request_frames, Request, request(), client_max());
message_props!(response_frames, Response, response(), client_max());
message_props!(repl_msg_frames, ReplMsg, repl_msg(), repl_max());
message_props!(repl_ack_frames, ReplAck, repl_ack(), repl_max());
message_props!(
    server_request_frames,
    ServerRequest,
    server_request(),
    wire::MAX_SERVER_FRAME
);
message_props!(
    server_response_frames,
    ServerResponse,
    server_response(),
    wire::MAX_SERVER_FRAME
);

proptest! {
    #![proptest_config(config())]

    // -----------------------------------------------------------------------
    // Frames, whatever the type
    // -----------------------------------------------------------------------

    #[test]
    fn frame_above_the_limit_is_refused_before_reading_it(
        (max, body) in (0usize..64)
            .prop_flat_map(|max| (Just(max), vec(any::<u8>(), max + 1..max + 33)))
    ) {
        let mut buf = (body.len() as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(&body);
        let got = wire::read_frame_bytes(&mut buf.as_slice(), max);
        prop_assert!(
            matches!(
                got,
                Err(WireError::TooLarge { len, max: m }) if len == body.len() && m == max
            ),
            "{:?}", got
        );
    }

    #[test]
    fn any_frame_within_the_limit_reads_back(bodies in vec(bytes(64), 0..4)) {
        let mut buf = Vec::new();
        for b in &bodies {
            buf.extend_from_slice(&(b.len() as u32).to_be_bytes());
            buf.extend_from_slice(b);
        }
        let mut r = buf.as_slice();
        for b in &bodies {
            prop_assert_eq!(&wire::read_frame_bytes(&mut r, 64).unwrap(), b);
        }
        prop_assert!(matches!(wire::read_frame_bytes(&mut r, 64), Err(WireError::Closed)));
    }

    // -----------------------------------------------------------------------
    // Beacons
    // -----------------------------------------------------------------------

    #[test]
    fn beacon_round_trips_with_and_without_key(b in beacon()) {
        let key = harness::fuzz_cluster_key();
        prop_assert_eq!(Beacon::decode(&b.encode(None), None).unwrap(), b.clone());
        prop_assert_eq!(Beacon::decode(&b.encode(Some(key)), Some(key)).unwrap(), b);
    }

    #[test]
    fn beacon_with_the_wrong_key_or_none_is_refused(b in beacon(), secret in bytes(40)) {
        let key = harness::fuzz_cluster_key();
        prop_assume!(secret != harness::FUZZ_SECRET);
        let other = ClusterKey::new(&secret);
        let tagged = b.encode(Some(key));
        prop_assert!(matches!(Beacon::decode(&tagged, Some(&other)), Err(WireError::Forged)));
        prop_assert!(Beacon::decode(&tagged, None).is_err());
        prop_assert!(Beacon::decode(&b.encode(None), Some(key)).is_err());
    }

    #[test]
    fn truncated_beacon_is_an_error(b in beacon()) {
        let key = harness::fuzz_cluster_key();
        for k in [None, Some(key)] {
            let bytes = b.encode(k);
            for cut in 0..bytes.len() {
                prop_assert!(Beacon::decode(&bytes[..cut], k).is_err(), "cut at {}", cut);
            }
        }
    }

    #[test]
    fn tampered_keyed_beacon_is_forged(b in beacon(), edit in any::<(Index, u8)>()) {
        let key = harness::fuzz_cluster_key();
        let bad = mutate(b.encode(Some(key)), &[edit]);
        prop_assert!(matches!(Beacon::decode(&bad, Some(key)), Err(WireError::Forged)));
    }

    #[test]
    fn beacon_with_another_magic_or_version_is_refused(
        b in beacon(),
        magic in any::<u32>(),
        version in any::<u16>(),
    ) {
        prop_assume!(magic != wire::MAGIC || version != wire::PROTOCOL_VERSION);
        let other = Beacon { magic, version, ..b };
        prop_assert!(Beacon::decode(&other.encode(None), None).is_err());
    }

    #[test]
    fn beacon_bytes_never_panic(
        data in bytes(600),
        edits in vec(any::<(Index, u8)>(), 0..3),
        b in beacon(),
        keyed in any::<bool>(),
    ) {
        harness::beacon(&data);
        let key = keyed.then(harness::fuzz_cluster_key);
        let sel = if keyed { harness::BEACON_KEYED } else { 0 };
        harness::beacon(&[&[sel][..], &mutate(b.encode(key), &edits)].concat());
    }

    // -----------------------------------------------------------------------
    // RESP
    // -----------------------------------------------------------------------

    #[test]
    fn resp_array_round_trips(
        args in vec(bytes(24), 1..6),
        trailing in bytes(16),
    ) {
        let enc = harness::resp_array(&args);
        let limits = Limits::default();
        prop_assert_eq!(parse_command(&enc, limits), Ok(Some((args.clone(), enc.len()))));
        // Whatever follows (the next pipelined command) is left alone.
        let more = [&enc[..], &trailing].concat();
        prop_assert_eq!(parse_command(&more, limits), Ok(Some((args, enc.len()))));
    }

    #[test]
    fn resp_pipeline_parses_command_by_command(cmds in vec(vec(bytes(12), 1..4), 1..5)) {
        let stream: Vec<u8> = cmds.iter().flat_map(|c| harness::resp_array(c)).collect();
        let mut pos = 0;
        for c in &cmds {
            let (args, used) = parse_command(&stream[pos..], Limits::default()).unwrap().unwrap();
            prop_assert_eq!(&args, c);
            pos += used;
        }
        prop_assert_eq!(pos, stream.len());
        prop_assert_eq!(parse_command(&stream[pos..], Limits::default()), Ok(None));
    }

    #[test]
    fn truncated_resp_command_asks_for_more(args in vec(bytes(16), 1..5)) {
        let enc = harness::resp_array(&args);
        for cut in 0..enc.len() {
            let got = parse_command(&enc[..cut], Limits::default());
            prop_assert_eq!(got, Ok(None), "cut at {}", cut);
        }
    }

    #[test]
    fn resp_inline_command_round_trips(
        words in vec("[A-Za-z0-9_:.{}-]{1,12}", 1..6),
        crlf in any::<bool>(),
    ) {
        let line = format!("{}{}", words.join(" "), if crlf { "\r\n" } else { "\n" });
        let args: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        let got = parse_command(line.as_bytes(), Limits::default());
        prop_assert_eq!(got, Ok(Some((args, line.len()))));
        for cut in 0..line.len() {
            prop_assert_eq!(parse_command(&line.as_bytes()[..cut], Limits::default()), Ok(None));
        }
    }

    #[test]
    fn resp_limits_are_enforced(
        args in vec(bytes(24), 1..8),
        max_bulk in 0usize..24,
        max_args in 0usize..8,
    ) {
        let limits = Limits { max_bulk, max_args, max_inline: 1024, ..Limits::default() };
        let enc = harness::resp_array(&args);
        let got = parse_command(&enc, limits);
        if args.len() > max_args || args.iter().any(|a| a.len() > max_bulk) {
            prop_assert!(got.is_err(), "{:?}", got);
        } else {
            prop_assert_eq!(got, Ok(Some((args, enc.len()))));
        }
    }

    #[test]
    fn resp_bytes_never_panic(sel in any::<u8>(), data in bytes(256)) {
        harness::resp(&[&[sel][..], &data].concat());
    }

    #[test]
    fn mutated_resp_never_panics(
        sel in any::<u8>(),
        cmds in vec(vec(bytes(12), 0..4), 1..4),
        edits in vec(any::<(Index, u8)>(), 1..4),
    ) {
        let stream: Vec<u8> = cmds.iter().flat_map(|c| harness::resp_array(c)).collect();
        harness::resp(&[&[sel][..], &mutate(stream, &edits)].concat());
    }

    // -----------------------------------------------------------------------
    // Log records
    // -----------------------------------------------------------------------

    #[test]
    fn wal_records_round_trip(recs in vec(wal_record(), 0..8)) {
        records_round_trip(&recs)?;
    }

    #[test]
    fn snapshot_records_round_trip(recs in vec(snap_record(), 0..6)) {
        records_round_trip(&recs)?;
    }

    #[test]
    fn truncated_record_file_is_a_torn_tail(
        recs in vec(wal_record(), 1..6),
        cut in any::<Index>(),
    ) {
        let (file, ends) = record_file(&recs);
        let cut = cut.index(file.len());
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        let start = (if whole == 0 { 0 } else { ends[whole - 1] }) as u64;
        let bytes = &file[..cut];
        let mut r = Reader::new(bytes);
        let mut stream = bytes;
        let mut offset = 0;
        for rec in &recs[..whole] {
            prop_assert_eq!(r.next_record::<WalRecord>(), Ok(Some(rec.clone())));
            let streamed = record::read_from::<_, WalRecord>(&mut stream, &mut offset);
            prop_assert_eq!(streamed, Ok(Some(rec.clone())));
        }
        let want = || {
            if start as usize == cut {
                Ok(None)
            } else {
                Err(BadRecord::Torn { offset: start })
            }
        };
        prop_assert_eq!(r.next_record::<WalRecord>(), want());
        prop_assert_eq!(record::read_from::<_, WalRecord>(&mut stream, &mut offset), want());
    }

    #[test]
    fn damaged_record_file_never_yields_a_wrong_record(
        recs in vec(wal_record(), 1..6),
        edit in any::<(Index, u8)>(),
    ) {
        let (file, _) = record_file(&recs);
        let bad = mutate(file, &[edit]);
        let mut r = Reader::new(&bad);
        let mut i = 0;
        loop {
            match r.next_record::<WalRecord>() {
                Ok(Some(rec)) => {
                    prop_assert_eq!(Some(&rec), recs.get(i), "record {} read wrong", i);
                    i += 1;
                }
                Ok(None) => prop_assert!(false, "a damaged file read to a clean end"),
                Err(_) => break,
            }
        }
        prop_assert!(i < recs.len());
    }

    #[test]
    fn record_bytes_never_panic(sel in any::<u8>(), data in bytes(256)) {
        harness::record(&[&[sel][..], &data].concat());
    }

    #[test]
    fn mutated_record_files_never_panic(
        wal in vec(wal_record(), 1..5),
        snap in vec(snap_record(), 1..4),
        edits in vec(any::<(Index, u8)>(), 1..4),
        which in any::<bool>(),
    ) {
        // The checksum catches most edits; an edit of a length field moves
        // the reader into the middle of the data.
        let (file, sel) = if which { (record_file(&wal).0, 0) } else { (record_file(&snap).0, 1) };
        harness::record(&[&[sel][..], &mutate(file, &edits)].concat());
    }

    // -----------------------------------------------------------------------
    // Config
    // -----------------------------------------------------------------------

    #[test]
    fn config_text_never_panics(text in "\\PC{0,64}") {
        harness::config(text.as_bytes());
    }

    #[test]
    fn config_with_any_numbers_never_panics(settings in config_numbers()) {
        let text = serde_json::json!({ "node-settings": settings }).to_string();
        harness::config(text.as_bytes());
    }

    #[test]
    fn config_values_come_through(
        hb in 1u64..1000,
        ft_beats in 3u64..10,
        sui in 1u64..1000,
        lease_n in 2u64..10,
    ) {
        let text = serde_json::json!({"node-settings": {
            "heartbeat": hb,
            "failure-timeout": hb * ft_beats,
            "server-update-interval": sui,
            "lease-timeout": sui * lease_n,
        }})
        .to_string();
        let cfg = Config::parse(&text).unwrap();
        let n = &cfg.node_settings;
        prop_assert_eq!(n.heartbeat, hb);
        prop_assert_eq!(n.failure_timeout(), std::time::Duration::from_millis(hb * ft_beats));
        prop_assert_eq!(n.lease(), std::time::Duration::from_millis(sui * lease_n));
    }

    #[test]
    fn config_with_a_short_failure_timeout_is_refused(
        (hb, ft) in (1u64..1000).prop_flat_map(|hb| (Just(hb), 0..3 * hb))
    ) {
        let text = serde_json::json!({"node-settings": {"heartbeat": hb, "failure-timeout": ft}})
            .to_string();
        let e = Config::parse(&text).unwrap_err();
        prop_assert!(e.contains("failure-timeout"), "{}", e);
    }
}

/// `node-settings` with some numeric keys set to anything from small to
/// huge: what a hand-edited file may hold.
fn config_numbers() -> impl Strategy<Value = serde_json::Map<String, serde_json::Value>> {
    const INTS: [&str; 20] = [
        "heartbeat",
        "failure-timeout",
        "voting-wait",
        "election-wait",
        "server-update-interval",
        "reconnection-attempts",
        "min-in-sync",
        "lease-timeout",
        "max-key-bytes",
        "max-value-bytes",
        "max-connections",
        "log-retention-entries",
        "max-batch-bytes",
        "client-idle-timeout",
        "read-timeout",
        "max-memory",
        "write-timeout",
        "fsync-interval",
        "snapshot-threshold-bytes",
        "wal-segment-bytes",
    ];
    let int = prop_oneof![0u64..100_000, any::<u64>(), Just(u64::MAX)];
    let float = prop_oneof![
        0.0f64..1.0,
        any::<f64>().prop_filter("JSON has no NaN or inf", |f| f.is_finite())
    ];
    (
        vec(prop::option::of(int), INTS.len()),
        prop::option::of(float.clone()),
        prop::option::of(float),
    )
        .prop_map(|(ints, threshold, drift)| {
            let mut m = serde_json::Map::new();
            for (k, v) in INTS.iter().zip(ints) {
                if let Some(v) = v {
                    m.insert(k.to_string(), v.into());
                }
            }
            if let Some(t) = threshold {
                m.insert("majority-threshold".into(), t.into());
            }
            if let Some(d) = drift {
                m.insert("clock-drift".into(), d.into());
            }
            m
        })
}

fn record_file<T: Serialize>(recs: &[T]) -> (Vec<u8>, Vec<usize>) {
    let mut buf = Vec::new();
    let mut ends = Vec::new();
    for r in recs {
        record::encode_into(&mut buf, r);
        ends.push(buf.len());
    }
    (buf, ends)
}

/// Both readers give back every record, then a clean end.
fn records_round_trip<T>(recs: &[T]) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + Clone,
{
    let (file, ends) = record_file(recs);
    let mut r = Reader::new(&file);
    let mut stream = file.as_slice();
    let mut offset = 0;
    for (rec, end) in recs.iter().zip(&ends) {
        prop_assert_eq!(r.next_record::<T>(), Ok(Some(rec.clone())));
        prop_assert_eq!(r.offset(), *end as u64);
        prop_assert_eq!(
            record::read_from::<_, T>(&mut stream, &mut offset),
            Ok(Some(rec.clone()))
        );
        prop_assert_eq!(offset, *end as u64);
    }
    prop_assert_eq!(r.next_record::<T>(), Ok(None));
    prop_assert_eq!(
        record::read_from::<_, T>(&mut stream, &mut offset),
        Ok(None)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Fuzz seeds and regressions
// ---------------------------------------------------------------------------

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every committed seed and every kept fuzz finding goes through its
/// target's harness without a panic.
#[test]
fn fuzz_seeds_and_regressions() {
    let mut failed = Vec::new();
    let mut ran = 0;
    for target in harness::TARGETS {
        for kind in ["corpus", "regressions"] {
            let dir = fuzz_dir().join(kind).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for ent in entries {
                let path = ent.unwrap().path();
                if !path.is_file() || path.extension().is_some_and(|e| e == "md") {
                    continue;
                }
                let data = std::fs::read(&path).unwrap();
                ran += 1;
                if let Err(e) = std::panic::catch_unwind(|| harness::run(target, &data)) {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failed.push(format!("{}: {msg}", path.display()));
                }
            }
        }
    }
    assert!(ran > 0, "no seeds found under {}", fuzz_dir().display());
    assert!(
        failed.is_empty(),
        "fuzz inputs that fail:\n{}",
        failed.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Seed corpus
// ---------------------------------------------------------------------------

fn sample_status() -> NodeStatus {
    NodeStatus {
        node_id: 2,
        incarnation: 3,
        role: Role::Coordinator,
        epoch: 4,
        coordinator: Some(2),
        last: LogPos::new(4, 120),
        commit: 118,
        applied: LogPos::new(4, 118),
        digest: 0xdead_beef,
        keys: 1000,
        used_memory: 65536,
        max_memory: 1 << 30,
        auth: AuthStats {
            cluster_secret: true,
            forged_beacons: 1,
            replayed_beacons: 2,
            rejected_peers: 0,
            failed_client_auth: 3,
        },
    }
}

fn sample_view() -> ClusterView {
    let member = |id: u64, role: Role| MemberInfo {
        node_id: id,
        incarnation: 1,
        data_addr: format!("127.0.0.1:{}", 7000 + id),
        beacon_addr: format!("127.0.0.1:{}", 8000 + id),
        resp_addr: Some(format!("127.0.0.1:{}", 6300 + id)),
        role,
        in_sync: true,
        log_position: LogPos::new(4, 120),
        digest: 77,
        last_status_ms: Some(12),
    };
    ClusterView {
        epoch: 4,
        coordinator: Some(1),
        isr: vec![1, 2],
        isr_version: 9,
        members: vec![member(1, Role::Coordinator), member(2, Role::Replica)],
        auth: AuthStats::default(),
        recovery: Some("waiting for node 1".into()),
    }
}

fn sample_entries() -> Vec<Entry> {
    vec![
        Entry {
            pos: LogPos::new(4, 119),
            op: Op::Put {
                key: b"user:1".to_vec(),
                value: b"alice".to_vec(),
            },
        },
        Entry {
            pos: LogPos::new(4, 120),
            op: Op::Delete {
                key: b"user:2".to_vec(),
            },
        },
    ]
}

fn sample_beacon() -> Beacon {
    Beacon {
        magic: wire::MAGIC,
        version: wire::PROTOCOL_VERSION,
        from: 2,
        incarnation: 3,
        epoch: 4,
        role: Role::Replica,
        last: LogPos::new(4, 120),
        applied: LogPos::new(4, 118),
        digest: 77,
        seq: 5,
    }
}

/// Seeds for one message type of the `frames` target: each message as a
/// frame, all of them as one stream, the first as a bare body, the stream
/// sealed, and a few broken framings.
fn frame_seeds<T: Serialize>(out: &mut Seeds, ty: &str, msgs: &[(&str, T)]) {
    let sel = frame_sel(ty);
    let tag = ty.to_lowercase();
    let mut stream = vec![sel];
    let mut sealed = vec![sel | harness::FRAME_SEALED];
    let mut tx = Sealer::new(Some(session_key()));
    for (name, m) in msgs {
        let mut one = vec![sel];
        wire::encode_frame_into(&mut one, m);
        out.push((format!("{tag}-{name}"), one));
        wire::encode_frame_into(&mut stream, m);
        tx.frame_into(&mut sealed, m);
    }
    out.push((format!("{tag}-body-{}", msgs[0].0), {
        let mut b = vec![sel];
        b.extend_from_slice(&wire::encode(&msgs[0].1));
        b
    }));
    let mut cut = stream.clone();
    cut.truncate(stream.len() - 1);
    out.push((format!("{tag}-stream"), stream));
    out.push((format!("{tag}-stream-truncated"), cut));
    out.push((format!("{tag}-sealed-stream"), sealed));
    out.push((
        format!("{tag}-huge-length"),
        vec![sel, 0xff, 0xff, 0xff, 0xff, 1, 2, 3],
    ));
}

/// Named seed files.
type Seeds = Vec<(String, Vec<u8>)>;

fn seeds() -> Vec<(&'static str, Seeds)> {
    let mut frames = Vec::new();
    let follow = FollowRequest {
        node_id: 2,
        incarnation: 3,
        epoch: 4,
        last: LogPos::new(4, 120),
        committed: LogPos::new(4, 118),
    };
    let mut bad_magic = Hello::new(ConnKind::Client, [0; 16]);
    bad_magic.magic = 0x1234_5678;
    frame_seeds(
        &mut frames,
        "Hello",
        &[
            ("client", Hello::new(ConnKind::Client, [0; 16])),
            ("member", Hello::new(ConnKind::Member, [7; 16])),
            ("follow", Hello::new(ConnKind::Follow(follow), [9; 16])),
            ("bad-magic", bad_magic),
        ],
    );
    let (c, a) = harness::FUZZ_NONCES;
    frame_seeds(
        &mut frames,
        "HelloReply",
        &[
            (
                "accept-proof",
                HelloReply::Accept {
                    nonce: a,
                    proof: Some(harness::fuzz_cluster_key().accept_proof(&c, &a)),
                },
            ),
            (
                "accept-open",
                HelloReply::Accept {
                    nonce: a,
                    proof: None,
                },
            ),
            (
                "refused",
                HelloReply::Refused {
                    kind: ErrorKind::AuthFailed,
                    message: "wrong cluster secret".into(),
                },
            ),
        ],
    );
    frame_seeds(
        &mut frames,
        "Request",
        &[
            ("get", Request::Get { key: b"k".to_vec() }),
            (
                "put",
                Request::Put {
                    key: b"user:1".to_vec(),
                    value: vec![0, 1, 2, 255],
                },
            ),
            ("delete", Request::Delete { key: b"k".to_vec() }),
            ("status", Request::Status),
            (
                "auth",
                Request::Auth {
                    password: b"hunter2".to_vec(),
                },
            ),
        ],
    );
    frame_seeds(
        &mut frames,
        "Response",
        &[
            ("value", Response::Value(Some(b"alice".to_vec()))),
            ("no-value", Response::Value(None)),
            ("written", Response::Written),
            ("deleted", Response::Deleted(true)),
            ("status", Response::Status(sample_status())),
            (
                "not-coordinator",
                Response::NotCoordinator {
                    epoch: 4,
                    coordinator: Some("127.0.0.1:7001".into()),
                },
            ),
            (
                "error",
                Response::Error {
                    kind: ErrorKind::NotEnoughReplicas,
                    message: "1 in sync, 2 needed".into(),
                },
            ),
            ("authenticated", Response::Authenticated),
        ],
    );
    frame_seeds(
        &mut frames,
        "ReplMsg",
        &[
            (
                "append",
                ReplMsg::Append {
                    epoch: 4,
                    prev: LogPos::new(4, 118),
                    entries: sample_entries().into_iter().map(Arc::new).collect(),
                    commit: 118,
                },
            ),
            (
                "snapshot-begin",
                ReplMsg::SnapshotBegin {
                    epoch: 4,
                    pos: LogPos::new(4, 100),
                },
            ),
            (
                "snapshot-chunk",
                ReplMsg::SnapshotChunk {
                    pairs: vec![
                        dkv::store::Pair {
                            key: b"a".to_vec(),
                            value: b"1".to_vec(),
                            expires_at: None,
                        },
                        dkv::store::Pair {
                            key: b"b".to_vec(),
                            value: vec![],
                            expires_at: Some(1_800_000_000_000),
                        },
                    ],
                },
            ),
            ("snapshot-end", ReplMsg::SnapshotEnd { epoch: 4 }),
            (
                "refused",
                ReplMsg::Refused {
                    epoch: 4,
                    why: Refusal::NotCoordinator,
                },
            ),
        ],
    );
    frame_seeds(
        &mut frames,
        "ReplAck",
        &[(
            "ack",
            ReplAck {
                epoch: 4,
                last: LogPos::new(4, 120),
                leaving: false,
            },
        )],
    );
    frame_seeds(
        &mut frames,
        "ServerRequest",
        &[
            (
                "register",
                ServerRequest::Register {
                    node_id: Some(2),
                    incarnation: 3,
                    data_addr: "127.0.0.1:7002".into(),
                    beacon_addr: "127.0.0.1:8002".into(),
                    last: LogPos::new(4, 120),
                    resp_addr: Some("127.0.0.1:6302".into()),
                },
            ),
            ("who-is-coordinator", ServerRequest::WhoIsCoordinator),
            ("view", ServerRequest::View),
            (
                "status",
                ServerRequest::Status {
                    from: 1,
                    epoch: 4,
                    reports: vec![MemberReport {
                        node_id: 2,
                        role: Role::Replica,
                        applied: LogPos::new(4, 118),
                        digest: 77,
                    }],
                },
            ),
            (
                "set-isr",
                ServerRequest::SetIsr {
                    from: 1,
                    epoch: 4,
                    isr: vec![1, 2],
                },
            ),
            (
                "request-grant",
                ServerRequest::RequestGrant {
                    candidate: 2,
                    epoch: 4,
                    last: LogPos::new(4, 120),
                },
            ),
            (
                "auth",
                ServerRequest::Auth {
                    password: b"hunter2".to_vec(),
                },
            ),
        ],
    );
    frame_seeds(
        &mut frames,
        "ServerResponse",
        &[
            (
                "registered",
                ServerResponse::Registered {
                    node_id: 2,
                    view: sample_view(),
                },
            ),
            (
                "coordinator",
                ServerResponse::Coordinator {
                    epoch: 4,
                    node_id: 1,
                    addr: "127.0.0.1:7001".into(),
                },
            ),
            ("no-coordinator", ServerResponse::NoCoordinator { epoch: 4 }),
            ("view", ServerResponse::View(sample_view())),
            ("ok", ServerResponse::Ok(ClusterView::default())),
            (
                "rejected",
                ServerResponse::Rejected {
                    epoch: 3,
                    reason: "stale epoch".into(),
                },
            ),
            (
                "error",
                ServerResponse::Error {
                    kind: ErrorKind::AuthRequired,
                    message: "authentication required".into(),
                },
            ),
            ("authenticated", ServerResponse::Authenticated),
        ],
    );

    let resp_seed = |sel: u8, bytes: &[u8]| [&[sel][..], bytes].concat();
    let resp: Seeds = vec![
        (
            "set".into(),
            resp_seed(0, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nxy\r\n"),
        ),
        (
            "get".into(),
            resp_seed(0, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
        ),
        (
            "pipeline".into(),
            resp_seed(
                0,
                b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n*1\r\n$4\r\nPING\r\n",
            ),
        ),
        ("inline".into(), resp_seed(0, b"SET k v\r\nGET k\n")),
        (
            "auth".into(),
            resp_seed(0, b"*2\r\n$4\r\nAUTH\r\n$7\r\nhunter2\r\n"),
        ),
        (
            "hello-auth".into(),
            resp_seed(
                0,
                b"*5\r\n$5\r\nHELLO\r\n$1\r\n2\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$2\r\npw\r\n",
            ),
        ),
        ("empty-array".into(), resp_seed(0, b"*0\r\n")),
        ("negative-count".into(), resp_seed(0, b"*-1\r\n")),
        ("negative-bulk".into(), resp_seed(0, b"*1\r\n$-1\r\n")),
        (
            "bulk-unterminated".into(),
            resp_seed(0, b"*1\r\n$3\r\nGETxx"),
        ),
        ("huge-bulk".into(), resp_seed(0, b"*1\r\n$99999999999\r\n")),
        ("not-bulk".into(), resp_seed(0, b"*1\r\n:3\r\n")),
        (
            "small-limits".into(),
            resp_seed(
                0x07,
                b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$9\r\nxxxxxxxxx\r\n",
            ),
        ),
    ];

    let key = harness::fuzz_cluster_key();
    let b = sample_beacon();
    let old = Beacon {
        version: wire::PROTOCOL_VERSION.wrapping_sub(1),
        ..b.clone()
    };
    let beacon: Seeds = vec![
        ("open".into(), [&[0u8][..], &b.encode(None)].concat()),
        (
            "keyed".into(),
            [&[harness::BEACON_KEYED][..], &b.encode(Some(key))].concat(),
        ),
        (
            "old-version".into(),
            [&[0u8][..], &old.encode(None)].concat(),
        ),
        ("too-large".into(), vec![0u8; 600]),
    ];

    let mut wal = vec![0u8];
    for r in [
        WalRecord::SegmentStart {
            prev: LogPos::new(4, 118),
        },
        WalRecord::Entry(sample_entries()[0].clone()),
        WalRecord::Entry(sample_entries()[1].clone()),
        WalRecord::Commit(119),
        WalRecord::Truncate {
            to: LogPos::new(4, 119),
        },
    ] {
        record::encode_into(&mut wal, &r);
    }
    let mut torn = wal.clone();
    torn.truncate(wal.len() - 3);
    let mut zero_tail = wal.clone();
    zero_tail.extend_from_slice(&[5, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0]);
    let mut snap = vec![1u8];
    for r in [
        SnapRecord::Header {
            magic: 0x444B_5353,
            version: 1,
            pos: LogPos::new(4, 118),
        },
        SnapRecord::Pairs(vec![(b"a".to_vec(), b"1".to_vec())]),
        SnapRecord::Pairs(vec![(b"b".to_vec(), b"2".to_vec())]),
        SnapRecord::End { keys: 2 },
    ] {
        record::encode_into(&mut snap, &r);
    }
    let records: Seeds = vec![
        ("wal-segment".into(), wal),
        ("wal-torn-tail".into(), torn),
        ("wal-zero-tail".into(), zero_tail),
        ("snapshot".into(), snap),
    ];

    let repo_config = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.json"))
        .expect("config.json");
    let every_key = serde_json::to_vec_pretty(&Config::default()).unwrap();
    let config: Seeds = vec![
        ("empty".into(), b"{}".to_vec()),
        ("repo-config".into(), repo_config),
        ("every-key".into(), every_key),
        (
            "big-numbers".into(),
            serde_json::to_vec(&serde_json::json!({"node-settings": {
                "max-memory": u64::MAX,
                "snapshot-threshold-bytes": u64::MAX,
                "log-retention-entries": u64::MAX,
                "majority-threshold": 1e-300,
            }}))
            .unwrap(),
        ),
        (
            "original-2018".into(),
            br#"{"server-ip-port": "127.0.0.1:12345", "node-settings": {"heartbeat": 5000,
"voting-wait": 20000, "election-wait": 5000, "server-update-interval": 1000,
"reconnection-attempts": 5, "majority-threshold": 0.50}}"#
                .to_vec(),
        ),
        (
            "invalid".into(),
            br#"{"node-settings": {"heartbeat": 100, "failure-timeout": 150,
"fsync": "sometimes"}, "colour": 1}"#
                .to_vec(),
        ),
    ];

    vec![
        ("frames", frames),
        ("resp", resp),
        ("beacon", beacon),
        ("record", records),
        ("config", config),
    ]
}

/// Rewrites `fuzz/corpus/<target>/` from the samples above (run after a
/// change of the wire format; the files are committed).
#[test]
#[ignore = "writes fuzz/corpus/; run by hand"]
fn write_fuzz_seed_corpus() {
    for (target, files) in seeds() {
        let dir = fuzz_dir().join("corpus").join(target);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

/// The generated seeds are what the targets expect: every sample message
/// decodes through the path its seed exercises.
#[test]
fn seed_samples_decode() {
    for (target, files) in seeds() {
        for (name, bytes) in files {
            harness::run(target, &bytes);
            if target == "frames" && !name.contains("huge") && !name.contains("truncated") {
                let (sel, rest) = bytes.split_first().unwrap();
                if sel & harness::FRAME_SEALED == 0 && !name.contains("-body-") {
                    let mut r = rest;
                    while !r.is_empty() {
                        wire::read_frame_bytes(&mut r, 1 << 20)
                            .unwrap_or_else(|e| panic!("seed {name}: {e}"));
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Fuzz findings (also under fuzz/regressions/)
// ---------------------------------------------------------------------------

/// RESP parsing must not depend on how TCP splits a command: a prefix of a
/// command that parses must ask for more bytes. Lengths written with more
/// than 32 characters (leading zeros, a sign) parse when their line is
/// complete but are "length line too long" while it is still arriving.
#[test]
fn regression_resp_long_length_line_split_across_reads() {
    let zeros = "0".repeat(40);
    let limits = Limits::default();
    for cmd in [
        format!("*{zeros}\r\n"),
        format!("*1\r\n${zeros}3\r\nabc\r\n"),
    ] {
        let cmd = cmd.as_bytes();
        // Refusing such lengths outright is a fix too.
        if parse_command(cmd, limits).is_err() {
            continue;
        }
        for cut in 0..cmd.len() {
            let prefix = parse_command(&cmd[..cut], limits);
            assert_eq!(
                prefix,
                Ok(None),
                "{} parses, but its first {cut} bytes do not ask for more",
                cmd.escape_ascii()
            );
        }
    }
}

/// Huge numbers in a config file are refused with a message (or accepted),
/// never an arithmetic overflow: every derived setting of a config that
/// validates must compute.
#[test]
fn regression_config_huge_numbers_do_not_overflow() {
    let max = u64::MAX;
    let cases = [
        // failure-timeout defaults to 5 heartbeats.
        format!(r#"{{"node-settings": {{"heartbeat": {max}}}}}"#),
        // The failure-timeout error message computes 3 heartbeats.
        format!(r#"{{"node-settings": {{"heartbeat": {max}, "failure-timeout": 1}}}}"#),
        // lease-timeout defaults to 5 server-update-intervals.
        format!(r#"{{"node-settings": {{"server-update-interval": {max}}}}}"#),
        // The lease-timeout error message computes 2 server-update-intervals.
        format!(r#"{{"node-settings": {{"server-update-interval": {max}, "lease-timeout": 1}}}}"#),
        // max_repl_frame() adds to max-batch-bytes.
        format!(r#"{{"node-settings": {{"max-batch-bytes": {max}}}}}"#),
    ];
    let mut failed = Vec::new();
    for text in &cases {
        if let Err(e) = std::panic::catch_unwind(|| harness::config(text.as_bytes())) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{text}: {msg}"));
        }
    }
    assert!(
        failed.is_empty(),
        "configs that panic:\n{}",
        failed.join("\n")
    );
}
