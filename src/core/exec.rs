//! The one executor of a [`NodeCore`]'s actions. The node's driver, the
//! simulator and the election tests each implement [`NodeIo`] (how to send
//! a beacon, make a server call, take the coordinator role...); the rules
//! of *executing* — order, and what a step that cannot be done tells the
//! core — live here once:
//!
//! * actions run in the order the core returned them;
//! * a member added to the commit set that is behind the commit (the commit
//!   moved on since the core decided) must not be recorded in sync by the
//!   `SetIsr` call of the same batch: that call fails at once, and the core
//!   asks again at a later tick (see `core::node`);
//! * a server call the link cannot take, or one answered at once (a
//!   synchronous test server), is fed back to the core as its reply, and
//!   the actions that answer produces run next.

use super::node::{Action, Call, Input, NodeCore, Serving};
use crate::types::{Epoch, NodeId};
use crate::wire::{Beacon, ServerRequest, ServerResponse};
use std::time::Instant;

/// What became of a server call handed to the runtime.
#[derive(Debug)]
pub enum Called {
    /// On its way; the reply arrives later as an input.
    Sent,
    /// Answered already (a synchronous server).
    Answered(ServerResponse),
    /// Not sent: why (the core hears it as a failed call).
    Failed(String),
}

/// One runtime's way of doing each action.
pub trait NodeIo {
    /// Called before each action (tracing, recording).
    fn saw(&mut self, _action: &Action) {}
    fn send_beacon(&mut self, to: Vec<String>, beacon: Beacon);
    fn call_server(&mut self, call: Call, request: ServerRequest) -> Called;
    fn become_coordinator(&mut self, epoch: Epoch, isr: Vec<NodeId>, required: usize);
    fn step_down(&mut self);
    fn follow(&mut self, coordinator: NodeId, addr: String, epoch: Epoch);
    /// Makes the commit wait for `id`; returns whether `id` holds every
    /// committed entry now.
    fn add_to_commit_set(&mut self, id: NodeId) -> bool;
    fn remove_from_commit_set(&mut self, id: NodeId);
    /// See [`Action::ReleaseFollower`].
    fn release_follower(&mut self, id: NodeId);
    fn set_required(&mut self, n: usize);
    fn publish(&mut self, serving: Serving);
    /// See [`Action::HoldWrites`].
    fn hold_writes(&mut self, target: Option<NodeId>, successor: Option<String>);
}

/// Executes `actions` on `io`, feeding back to `core` what the execution
/// itself tells it (see the module doc).
pub fn execute(core: &mut NodeCore, now: Instant, actions: Vec<Action>, io: &mut impl NodeIo) {
    let mut behind: Option<NodeId> = None;
    for a in actions {
        io.saw(&a);
        match a {
            Action::CallServer {
                call: Call::SetIsr, ..
            } if behind.is_some() => {
                let id = behind.take().expect("behind");
                let reply = Err(format!(
                    "replica {id} fell behind the commit before it joined the in-sync set"
                ));
                feed(core, now, Call::SetIsr, reply, io);
            }
            Action::SendBeacon { to, beacon } => io.send_beacon(to, beacon),
            Action::CallServer { call, request } => match io.call_server(call, request) {
                Called::Sent => {}
                Called::Answered(r) => feed(core, now, call, Ok(r), io),
                Called::Failed(why) => feed(core, now, call, Err(why), io),
            },
            Action::BecomeCoordinator {
                epoch,
                isr,
                required,
            } => io.become_coordinator(epoch, isr, required),
            Action::StepDown => io.step_down(),
            Action::Follow {
                coordinator,
                addr,
                epoch,
            } => io.follow(coordinator, addr, epoch),
            Action::AddToCommitSet(id) => {
                if !io.add_to_commit_set(id) {
                    behind = Some(id);
                }
            }
            Action::RemoveFromCommitSet(id) => io.remove_from_commit_set(id),
            Action::ReleaseFollower(id) => io.release_follower(id),
            Action::SetRequired(n) => io.set_required(n),
            Action::Publish(s) => io.publish(s),
            Action::HoldWrites { target, successor } => io.hold_writes(target, successor),
        }
    }
}

fn feed(
    core: &mut NodeCore,
    now: Instant,
    call: Call,
    reply: Result<ServerResponse, String>,
    io: &mut impl NodeIo,
) {
    let more = core.handle(
        now,
        Input::ServerReply {
            call,
            sent: now,
            reply,
        },
    );
    execute(core, now, more, io);
}
