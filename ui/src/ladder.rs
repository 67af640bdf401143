//! The SIP ladder diagram of a call: three columns (caller, switchboard,
//! callee), one arrow per message in the order they crossed the
//! switchboard, each labelled with its time and first line.
//!
//! Only geometry is computed here; the `call.html` template draws it as
//! SVG, so every text from SIP goes through the template's escaping.

use crate::api::SipMessage;

/// Horizontal position of the caller, switchboard and callee columns.
pub const COLUMNS: [u32; 3] = [80, 380, 680];
/// Width and per-message height of the drawing.
pub const WIDTH: u32 = 760;
const TOP: u32 = 50;
const ROW: u32 = 38;

/// One arrow of the ladder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrow {
    /// Index of the message, from 0.
    pub index: usize,
    pub x1: u32,
    pub x2: u32,
    pub y: u32,
    /// Where the label starts (left of the arrow's middle).
    pub label_x: u32,
    /// `+1.234 s` from the first message.
    pub time: String,
    pub first_line: String,
    pub cseq: String,
    /// `request` or `response`, for colouring.
    pub kind: &'static str,
}

impl Arrow {
    /// The first line, clipped to fit between two columns.
    pub fn short_line(&self) -> String {
        clip(&self.first_line, 38)
    }
}

/// The whole diagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ladder {
    pub arrows: Vec<Arrow>,
    pub height: u32,
}

impl Ladder {
    /// Lays out `messages` (in the order given: the API's order).
    pub fn of(messages: &[SipMessage]) -> Ladder {
        let first = messages.first().map_or(0, |m| m.at_ms);
        let arrows = messages
            .iter()
            .enumerate()
            .map(|(index, m)| {
                // Leg a runs between the caller and the switchboard, leg b
                // between the switchboard and the callee.
                let peer = if m.leg == "b" { COLUMNS[2] } else { COLUMNS[0] };
                let (x1, x2) = if m.direction == "in" {
                    (peer, COLUMNS[1])
                } else {
                    (COLUMNS[1], peer)
                };
                let elapsed = m.at_ms.saturating_sub(first);
                Arrow {
                    index,
                    x1,
                    x2,
                    y: TOP + ROW * u32::try_from(index).unwrap_or(u32::MAX / ROW),
                    label_x: x1.min(x2) + 8,
                    time: format!("+{}.{:03} s", elapsed / 1000, elapsed % 1000),
                    first_line: m.first_line.clone(),
                    cseq: m.cseq.clone(),
                    kind: if m.first_line.starts_with("SIP/") {
                        "response"
                    } else {
                        "request"
                    },
                }
            })
            .collect::<Vec<_>>();
        let height = TOP + ROW * u32::try_from(arrows.len()).unwrap_or(0) + 10;
        Ladder { arrows, height }
    }

    /// The bottom of the column lines.
    pub fn column_bottom(&self) -> u32 {
        self.height - 5
    }
}

/// A label short enough for the diagram (SIP first lines can be long URIs).
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut clipped: String = text.chars().take(max.saturating_sub(1)).collect();
        clipped.push('…');
        clipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(at_ms: u64, direction: &str, leg: &str, first_line: &str) -> SipMessage {
        SipMessage {
            at_ms,
            direction: direction.into(),
            leg: leg.into(),
            first_line: first_line.into(),
            ..SipMessage::default()
        }
    }

    #[test]
    fn arrows_point_from_sender_to_receiver_in_message_order() {
        let ladder = Ladder::of(&[
            message(1000, "in", "a", "INVITE sip:1002@h SIP/2.0"),
            message(1001, "out", "a", "SIP/2.0 100 Trying"),
            message(1002, "out", "b", "INVITE sip:1002@192.0.2.2 SIP/2.0"),
            message(2500, "in", "b", "SIP/2.0 180 Ringing"),
        ]);
        let ends: Vec<(u32, u32)> = ladder.arrows.iter().map(|a| (a.x1, a.x2)).collect();
        assert_eq!(
            ends,
            vec![
                (COLUMNS[0], COLUMNS[1]),
                (COLUMNS[1], COLUMNS[0]),
                (COLUMNS[1], COLUMNS[2]),
                (COLUMNS[2], COLUMNS[1]),
            ]
        );
        assert!(ladder.arrows.windows(2).all(|w| w[0].y < w[1].y));
        assert_eq!(ladder.arrows[3].time, "+1.500 s");
        assert_eq!(ladder.arrows[1].kind, "response");
        assert_eq!(ladder.arrows[2].kind, "request");
        assert!(ladder.height > ladder.arrows[3].y);
    }

    #[test]
    fn long_labels_are_clipped_on_a_character_boundary() {
        assert_eq!(clip("INVITE", 10), "INVITE");
        assert_eq!(clip("ééééé", 3), "éé…");
    }
}
