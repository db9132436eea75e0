//! Dialpad event → [`CtiEvent`] and record updates; the call status state machine.
//!
//! * [`extract`] turns a verified payload (real Dialpad call/SMS events, or the legacy JSON test
//!   shapes with an explicit `event_type`) into a [`Normalized`] value (spec §3.2, §3.4, §3.7,
//!   §3.8).
//! * [`merge`] holds the status table of spec §3.5 and the pure merge of an update into a call,
//!   voicemail or message record. The merge is order-independent: whatever order a call's events
//!   arrive in, the final record is the same (the status is a function of the earliest time each
//!   status was reported, walked through the §3.5 table in event-time order).
//! * [`apply`] combines both for the stores: given the locked rows, it returns the rows to write
//!   and the realtime messages to publish.

pub mod apply;
pub mod extract;
pub mod merge;
pub mod sanitize;

use serde::{Deserialize, Serialize};

use crate::model::{CallStatus, DialpadId, Direction, Timestamp};

pub use extract::{normalize, normalize_json};
pub use merge::{CallMerge, status_transition_allowed};

/// The logical event a Dialpad payload represents (spec §3.2, REWRITE column).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CtiEvent {
    /// `calling`, `ringing`, `queued`, legacy `call.ring`.
    CallRinging,
    /// `connected`, legacy `call.started`.
    CallStarted,
    /// `hold`.
    CallHeld,
    /// `hangup`, legacy `call.ended`.
    CallEnded,
    /// `missed`.
    CallMissed,
    /// `blocked`.
    CallRejected,
    /// `voicemail` (caller reached voicemail; no recording yet).
    CallVoicemail,
    /// `voicemail_uploaded`, legacy `voicemail.received` / `call.voicemail`.
    VoicemailReceived,
    /// `recording`, `admin_recording`, legacy `call.recording.completed`.
    RecordingCompleted,
    /// `transcription`, `call_transcription`.
    Transcription,
    /// `preanswer`: data is stored, the status does not change.
    CallUpdated,
    /// Inbound SMS.
    SmsReceived,
    /// Outbound SMS.
    SmsSent,
    /// Delivery-status update of a known message.
    SmsDelivered,
    /// Anything else: stored with status `ignored`, never retried.
    Ignored {
        /// The state / type that was not recognised (or why it was ignored).
        state: String,
    },
}

impl CtiEvent {
    /// Name used on the WebSocket (`call.ring`, `call.started`, …); `None` for events that are
    /// never pushed.
    pub fn wire_name(&self) -> Option<&'static str> {
        Some(match self {
            CtiEvent::CallRinging => "call.ring",
            CtiEvent::CallStarted => "call.started",
            CtiEvent::CallHeld => "call.held",
            CtiEvent::CallEnded => "call.ended",
            CtiEvent::CallMissed => "call.missed",
            CtiEvent::CallRejected => "call.rejected",
            CtiEvent::CallVoicemail => "call.voicemail",
            CtiEvent::VoicemailReceived => "voicemail.received",
            CtiEvent::RecordingCompleted => "call.recording.completed",
            CtiEvent::Transcription => "call.transcription",
            CtiEvent::SmsReceived => "sms.received",
            CtiEvent::SmsSent => "sms.sent",
            CtiEvent::SmsDelivered => "sms.delivered",
            CtiEvent::CallUpdated | CtiEvent::Ignored { .. } => return None,
        })
    }

    /// The status this event moves a call to, if any.
    pub fn call_status(&self) -> Option<CallStatus> {
        match self {
            CtiEvent::CallRinging => Some(CallStatus::Ringing),
            CtiEvent::CallStarted => Some(CallStatus::Active),
            CtiEvent::CallEnded => Some(CallStatus::Ended),
            CtiEvent::CallMissed => Some(CallStatus::Missed),
            CtiEvent::CallRejected => Some(CallStatus::Rejected),
            CtiEvent::CallVoicemail | CtiEvent::VoicemailReceived => Some(CallStatus::Voicemail),
            _ => None,
        }
    }
}

/// Changes an event makes to a call record. `None` fields leave the record's value alone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CallUpdate {
    /// Dialpad `call_id`.
    pub dialpad_call_id: Option<DialpadId>,
    /// Status reported by the event.
    pub status: Option<CallStatus>,
    /// Event time (epoch ms): Dialpad `event_timestamp`, else the arrival time.
    pub event_ms: i64,
    /// Direction.
    pub direction: Option<Direction>,
    /// Caller.
    pub from_number: Option<String>,
    /// Callee.
    pub to_number: Option<String>,
    /// Targeted Dialpad user.
    pub dialpad_user_id: Option<DialpadId>,
    /// `target.type`.
    pub target_type: Option<String>,
    /// `target.id`.
    pub target_id: Option<DialpadId>,
    /// Start.
    pub started_at: Option<Timestamp>,
    /// Answer time.
    pub answered_at: Option<Timestamp>,
    /// End.
    pub ended_at: Option<Timestamp>,
    /// Duration (s).
    pub duration_seconds: Option<i64>,
    /// Recording link.
    pub recording_url: Option<String>,
    /// Transcript.
    pub transcript: Option<String>,
    /// Voicemail recording link.
    pub voicemail_audio_url: Option<String>,
    /// Hold flag (`Some(true)` on hold, `Some(false)` on (re)connect).
    pub held: Option<bool>,
    /// Sanitised payload (spec §3.9), as JSON text.
    pub raw_payload: Option<crate::json::JsonText>,
}

/// A voicemail to create or update.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VoicemailUpdate {
    /// Call id (unique per app when present).
    pub dialpad_call_id: Option<DialpadId>,
    /// Voicemail box owner.
    pub dialpad_user_id: Option<DialpadId>,
    /// Caller.
    pub from_number: Option<String>,
    /// Callee.
    pub to_number: Option<String>,
    /// Recording link (required to create a voicemail).
    pub recording_url: Option<String>,
    /// Transcript.
    pub transcript: Option<String>,
    /// Length (s).
    pub duration_seconds: Option<i64>,
}

/// A message to create or update.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageUpdate {
    /// Dialpad message id.
    pub dialpad_message_id: Option<DialpadId>,
    /// Direction.
    pub direction: Option<Direction>,
    /// Sender.
    pub from_number: Option<String>,
    /// First recipient.
    pub to_number: Option<String>,
    /// All recipients.
    pub to_numbers: Vec<String>,
    /// Text.
    pub text: Option<String>,
    /// Dialpad user.
    pub dialpad_user_id: Option<DialpadId>,
    /// Sent time.
    pub sent_at: Option<Timestamp>,
    /// Delivery status.
    pub message_status: Option<String>,
}

/// The result of normalising one verified payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalized {
    /// Logical event.
    pub event: CtiEvent,
    /// Call changes (call events, and the call side of a voicemail).
    pub call: Option<CallUpdate>,
    /// Voicemail row to create/update.
    pub voicemail: Option<VoicemailUpdate>,
    /// Message row to create/update.
    pub message: Option<MessageUpdate>,
}

impl Normalized {
    /// An ignored event.
    pub fn ignored(state: impl Into<String>) -> Self {
        Self {
            event: CtiEvent::Ignored {
                state: state.into(),
            },
            call: None,
            voicemail: None,
            message: None,
        }
    }

    /// `true` when there is nothing to apply.
    pub fn is_ignored(&self) -> bool {
        matches!(self.event, CtiEvent::Ignored { .. })
    }
}
