//! What a seller decides about one buyer's connection, with no I/O and no clock: a pure
//! state machine in the shape of quinn-proto's `Connection`. The driver
//! ([`super::seller::handle_connection`]) feeds it what happened (`handle_*`, with the
//! time) and carries out what it asks ([`SellerState::poll_action`]) until
//! [`SellerState::poll_timeout`]; tests drive it with virtual time.
//!
//! The rules it holds:
//! - nothing is served before the buyer is found valid, free product or not (a free
//!   product's key is public: serving an early Open would bypass `--deny` and
//!   revocation); the feed is opened by the seller once valid, and an early Open from an
//!   invalid buyer is closed;
//! - uploads stop the moment the buyer becomes invalid and resume when it is valid again;
//! - `dazaar/valid` is sent on every change and repeated every [`VALID_REPEAT`];
//!   `dazaar/invalid` once per change;
//! - a time grant is checked again right when it runs out, else every `revalidate`;
//! - a buyer not valid for `unpaid_grace` (from the handshake, or from when it stopped
//!   being valid) is told to go; a connection that has not ended [`CLOSE_FLUSH`] later is
//!   cut.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::crypto::discovery_key;
use crate::payments::{GrantKind, Validation};

use super::seller::SellerEvent;

/// How often `dazaar/valid` is repeated while nothing changes (JS sends it on every
/// validation; once in a while is enough to keep the buyer's view of time left fresh).
pub const VALID_REPEAT: Duration = Duration::from_secs(5);

/// After a buyer is told to go, how long its connection may take to flush the last
/// messages before it is cut (a peer that stops reading must not keep the slot).
pub const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// What the driver does for the state machine.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Ask the payment gate about `buyer` (`fresh`: first time on this connection) and
    /// hand the answer to [`SellerState::handle_validation`].
    Validate {
        /// The buyer.
        buyer: [u8; 32],
        /// A new connection (the buyer may just have paid).
        fresh: bool,
    },
    /// Send `dazaar/one-time-feed` with `feed_key` and open that feed for the buyer.
    OpenFeed {
        /// The buyer.
        buyer: [u8; 32],
        /// The key it receives (its rekeyed key, or the feed's own when free).
        feed_key: [u8; 32],
    },
    /// Start or stop uploading on the buyer's channel.
    SetUploading {
        /// The channel's discovery key.
        discovery_key: [u8; 32],
        /// Upload or not.
        uploading: bool,
    },
    /// Close (refuse) a channel the buyer opened early.
    Close {
        /// The channel's discovery key.
        discovery_key: [u8; 32],
    },
    /// Send `dazaar/valid` with this body.
    SendValid(serde_json::Value),
    /// Send `dazaar/invalid` with `{"error": reason}`.
    SendInvalid(String),
    /// Report to the seller's events.
    Report(SellerEvent),
    /// Flush what is queued and close the connection.
    Shutdown,
    /// Cut the connection now.
    Abort,
}

/// The settings of one product the state machine needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSettings {
    /// Revalidation period.
    pub revalidate: Duration,
    /// How long a buyer may stay connected while not valid.
    pub unpaid_grace: Duration,
}

/// One buyer's connection, as the seller sees it.
#[derive(Debug)]
pub struct SellerState {
    settings: StateSettings,
    buyer: Option<[u8; 32]>,
    /// The discovery key of the channel opened for the buyer.
    channel: Option<[u8; 32]>,
    uploading: bool,
    valid: Option<bool>,
    last_valid_sent: Option<Instant>,
    next_check: Option<Instant>,
    checking: bool,
    unpaid_deadline: Option<Instant>,
    cut_at: Option<Instant>,
    dropped: Option<String>,
    actions: VecDeque<Action>,
}

impl SellerState {
    /// A connection whose handshake has not finished yet.
    pub fn new(settings: StateSettings) -> SellerState {
        SellerState {
            settings,
            buyer: None,
            channel: None,
            uploading: false,
            valid: None,
            last_valid_sent: None,
            next_check: None,
            checking: false,
            unpaid_deadline: None,
            cut_at: None,
            dropped: None,
            actions: VecDeque::new(),
        }
    }

    /// The buyer's key, once the handshake has finished.
    pub fn buyer(&self) -> Option<[u8; 32]> {
        self.buyer
    }

    /// Why the seller dropped the buyer, if it did.
    pub fn dropped(&self) -> Option<&str> {
        self.dropped.as_deref()
    }

    /// Whether the buyer's channel is uploading now.
    pub fn is_uploading(&self) -> bool {
        self.uploading
    }

    /// The handshake finished with `buyer`: it is validated at once and has
    /// `unpaid_grace` to become valid.
    pub fn handle_connected(&mut self, buyer: [u8; 32], now: Instant) {
        if self.buyer.is_some() {
            return;
        }
        self.buyer = Some(buyer);
        self.actions
            .push_back(Action::Report(SellerEvent::BuyerConnected { buyer }));
        self.next_check = Some(now);
        self.unpaid_deadline = Some(now + self.settings.unpaid_grace);
    }

    /// The buyer closed the channel with `discovery_key`: a new Open from it waits for
    /// the next validation like a first one.
    pub fn handle_channel_closed(&mut self, discovery_key: [u8; 32]) {
        if self.channel == Some(discovery_key) {
            self.channel = None;
            self.uploading = false;
        }
    }

    /// The gate's answer to the last [`Action::Validate`]; `feed_key` is the key this
    /// buyer receives.
    pub fn handle_validation(&mut self, answer: &Validation, feed_key: [u8; 32], now: Instant) {
        self.checking = false;
        let Some(buyer) = self.buyer else { return };
        if self.cut_at.is_some() {
            return;
        }
        let mut next = now + self.settings.revalidate;
        let ok = match answer {
            Validation::Valid { grant, .. } => {
                if grant.kind == GrantKind::TIME {
                    // Check again right when the time runs out.
                    next = next.min(now + Duration::from_millis(grant.remaining.saturating_add(1)));
                }
                if self.channel.is_none() {
                    self.actions.push_back(Action::OpenFeed { buyer, feed_key });
                    self.channel = Some(discovery_key(&feed_key));
                    self.uploading = true;
                } else if !self.uploading {
                    if let Some(dk) = self.channel {
                        self.actions.push_back(Action::SetUploading {
                            discovery_key: dk,
                            uploading: true,
                        });
                    }
                    self.uploading = true;
                }
                let changed = self.valid != Some(true);
                let repeat = self
                    .last_valid_sent
                    .is_none_or(|t| now.saturating_duration_since(t) >= VALID_REPEAT);
                let info = answer.to_wire_json();
                if changed || repeat {
                    self.actions.push_back(Action::SendValid(info.clone()));
                    self.last_valid_sent = Some(now);
                }
                if changed {
                    self.actions
                        .push_back(Action::Report(SellerEvent::BuyerValid {
                            buyer,
                            feed_key,
                            info,
                        }));
                }
                self.unpaid_deadline = None;
                true
            }
            Validation::Invalid { reason } => {
                if self.uploading {
                    if let Some(dk) = self.channel {
                        self.actions.push_back(Action::SetUploading {
                            discovery_key: dk,
                            uploading: false,
                        });
                    }
                    self.uploading = false;
                }
                if self.channel.is_none() {
                    // An Open the buyer sent early (it knows the key: a free product's,
                    // or a lapsed buyer's own) is refused, not left waiting for a
                    // validity that did not come.
                    self.actions.push_back(Action::Close {
                        discovery_key: discovery_key(&feed_key),
                    });
                }
                if self.valid == Some(true) {
                    // A buyer that stops being valid has the grace period to pay again.
                    self.unpaid_deadline = Some(now + self.settings.unpaid_grace);
                }
                if self.valid != Some(false) {
                    self.actions.push_back(Action::SendInvalid(reason.clone()));
                    self.actions
                        .push_back(Action::Report(SellerEvent::BuyerInvalid {
                            buyer,
                            reason: reason.clone(),
                        }));
                }
                false
            }
        };
        self.valid = Some(ok);
        self.next_check = Some(next);
    }

    /// Time has come to `now`: the unpaid deadline, the cut, or the next validation.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.cut_at.is_some_and(|t| now >= t) {
            self.cut_at = None;
            self.actions.push_back(Action::Abort);
            return;
        }
        if self.cut_at.is_none() && self.unpaid_deadline.is_some_and(|t| now >= t) {
            let reason = format!(
                "not valid within {} s: disconnected",
                self.settings.unpaid_grace.as_secs()
            );
            self.dropped = Some(reason);
            self.unpaid_deadline = None;
            self.next_check = None;
            self.cut_at = Some(now + CLOSE_FLUSH);
            // Flushes what is queued (the last dazaar/invalid), then closes.
            self.actions.push_back(Action::Shutdown);
            return;
        }
        if !self.checking && self.next_check.is_some_and(|t| now >= t) {
            if let Some(buyer) = self.buyer {
                self.checking = true;
                self.next_check = None;
                self.actions.push_back(Action::Validate {
                    buyer,
                    fresh: self.valid.is_none(),
                });
            }
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`SellerState::handle_timeout`] must be called next (`None`: nothing timed).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let check = if self.checking || self.cut_at.is_some() {
            None
        } else {
            self.next_check
        };
        let unpaid = if self.cut_at.is_some() {
            None
        } else {
            self.unpaid_deadline
        };
        [check, unpaid, self.cut_at].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::Grant;

    const BUYER: [u8; 32] = [7; 32];
    const FEED: [u8; 32] = [9; 32];

    fn settings() -> StateSettings {
        StateSettings {
            revalidate: Duration::from_secs(1),
            unpaid_grace: Duration::from_secs(60),
        }
    }

    fn valid_for(ms: u64) -> Validation {
        Validation::Valid {
            grant: Grant {
                kind: GrantKind::TIME,
                remaining: ms,
            },
            plugin: Some("ledger".into()),
        }
    }

    fn invalid(reason: &str) -> Validation {
        Validation::Invalid {
            reason: reason.into(),
        }
    }

    fn drain(s: &mut SellerState) -> Vec<Action> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    /// Advances to the next timeout and returns what it asks.
    fn tick(s: &mut SellerState) -> (Instant, Vec<Action>) {
        let at = s.poll_timeout().expect("a timeout");
        s.handle_timeout(at);
        (at, drain(s))
    }

    #[test]
    fn nothing_is_served_before_valid_and_an_early_open_is_closed() {
        let t0 = Instant::now();
        let mut s = SellerState::new(settings());
        assert_eq!(s.poll_timeout(), None, "nothing before the handshake");
        s.handle_connected(BUYER, t0);
        assert!(matches!(
            drain(&mut s)[..],
            [Action::Report(SellerEvent::BuyerConnected { .. })]
        ));
        let (at, actions) = tick(&mut s);
        assert_eq!(at, t0);
        assert_eq!(
            actions,
            [Action::Validate {
                buyer: BUYER,
                fresh: true
            }]
        );
        s.handle_validation(&invalid("no payment"), FEED, t0);
        let actions = drain(&mut s);
        assert!(
            !actions.iter().any(|a| matches!(a, Action::OpenFeed { .. })),
            "an invalid buyer gets no feed: {actions:?}"
        );
        assert!(actions.contains(&Action::Close {
            discovery_key: discovery_key(&FEED)
        }));
        assert!(actions.contains(&Action::SendInvalid("no payment".into())));
        assert!(!s.is_uploading());
    }

    #[test]
    fn a_valid_buyer_gets_its_feed_and_loses_uploads_the_moment_it_lapses() {
        let t0 = Instant::now();
        let mut s = SellerState::new(settings());
        s.handle_connected(BUYER, t0);
        drain(&mut s);
        tick(&mut s);
        s.handle_validation(&valid_for(2500), FEED, t0);
        let actions = drain(&mut s);
        assert_eq!(
            actions[0],
            Action::OpenFeed {
                buyer: BUYER,
                feed_key: FEED
            }
        );
        assert!(matches!(actions[1], Action::SendValid(_)));
        assert!(s.is_uploading());
        // Revalidated every second while time is left, valid not resent within 5 s.
        let (at, actions) = tick(&mut s);
        assert_eq!(at, t0 + Duration::from_secs(1));
        s.handle_validation(&valid_for(1500), FEED, at);
        assert_eq!(drain(&mut s), []);
        assert!(matches!(
            actions[..],
            [Action::Validate { fresh: false, .. }]
        ));
        // Checked again right when the grant runs out (1.5 s + 1 ms), not a second later.
        tick(&mut s);
        let at = at + Duration::from_secs(1);
        s.handle_validation(&valid_for(500), FEED, at);
        assert_eq!(s.poll_timeout(), Some(at + Duration::from_millis(501)));
        let (at, _) = tick(&mut s);
        s.handle_validation(&invalid("the paid time has run out"), FEED, at);
        let actions = drain(&mut s);
        assert_eq!(
            actions[0],
            Action::SetUploading {
                discovery_key: discovery_key(&FEED),
                uploading: false
            }
        );
        assert!(!s.is_uploading());
        assert!(actions.contains(&Action::SendInvalid("the paid time has run out".into())));
        // Paying again resumes uploads on the same channel, without a second Open.
        let (at, _) = tick(&mut s);
        s.handle_validation(&valid_for(60_000), FEED, at);
        let actions = drain(&mut s);
        assert_eq!(
            actions[0],
            Action::SetUploading {
                discovery_key: discovery_key(&FEED),
                uploading: true
            }
        );
        assert!(!actions.iter().any(|a| matches!(a, Action::OpenFeed { .. })));
    }

    #[test]
    fn valid_is_repeated_every_five_seconds_and_invalid_sent_once() {
        let t0 = Instant::now();
        let mut s = SellerState::new(settings());
        s.handle_connected(BUYER, t0);
        let mut valid_sent = 0;
        let mut now = t0;
        for _ in 0..11 {
            let (at, _) = tick(&mut s);
            now = at;
            s.handle_validation(&valid_for(3_600_000), FEED, now);
            valid_sent += drain(&mut s)
                .iter()
                .filter(|a| matches!(a, Action::SendValid(_)))
                .count();
        }
        assert_eq!(now, t0 + Duration::from_secs(10));
        assert_eq!(valid_sent, 3, "at 0, 5 and 10 s");
        let mut invalid_sent = 0;
        for _ in 0..3 {
            let (at, _) = tick(&mut s);
            s.handle_validation(&invalid("revoked"), FEED, at);
            invalid_sent += drain(&mut s)
                .iter()
                .filter(|a| matches!(a, Action::SendInvalid(_)))
                .count();
        }
        assert_eq!(invalid_sent, 1);
    }

    #[test]
    fn an_unpaid_buyer_is_told_to_go_then_cut() {
        let t0 = Instant::now();
        let mut s = SellerState::new(settings());
        s.handle_connected(BUYER, t0);
        drain(&mut s);
        let mut now;
        // Invalid every second until the grace runs out at 60 s.
        loop {
            let at = s.poll_timeout().expect("timeout");
            s.handle_timeout(at);
            now = at;
            let actions = drain(&mut s);
            if actions.contains(&Action::Shutdown) {
                break;
            }
            if actions.iter().any(|a| matches!(a, Action::Validate { .. })) {
                s.handle_validation(&invalid("no payment"), FEED, now);
                drain(&mut s);
            }
            assert!(now <= t0 + Duration::from_secs(60), "never dropped");
        }
        assert_eq!(now, t0 + Duration::from_secs(60));
        assert_eq!(s.dropped(), Some("not valid within 60 s: disconnected"));
        // No more validations; the connection is cut after the flush time.
        let (at, actions) = tick(&mut s);
        assert_eq!(at, now + CLOSE_FLUSH);
        assert_eq!(actions, [Action::Abort]);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn a_lapsed_buyer_gets_the_grace_again_and_paying_clears_it() {
        let t0 = Instant::now();
        let mut s = SellerState::new(settings());
        s.handle_connected(BUYER, t0);
        tick(&mut s);
        s.handle_validation(&valid_for(100_000), FEED, t0);
        drain(&mut s);
        // Valid for 100 s: no unpaid deadline, only revalidations.
        for _ in 0..70 {
            let (at, actions) = tick(&mut s);
            assert!(
                matches!(actions[..], [Action::Validate { .. }]),
                "{actions:?}"
            );
            s.handle_validation(&valid_for(100_000), FEED, at);
            drain(&mut s);
        }
        let (at, _) = tick(&mut s);
        s.handle_validation(&invalid("revoked"), FEED, at);
        drain(&mut s);
        let lapsed = at;
        loop {
            let (now, actions) = tick(&mut s);
            if actions.contains(&Action::Shutdown) {
                assert_eq!(now, lapsed + Duration::from_secs(60));
                break;
            }
            s.handle_validation(&invalid("revoked"), FEED, now);
            drain(&mut s);
        }
    }

    #[test]
    fn a_closed_channel_is_opened_again_at_the_next_valid_answer() {
        let t0 = Instant::now();
        let mut s = SellerState::new(settings());
        s.handle_connected(BUYER, t0);
        tick(&mut s);
        s.handle_validation(&valid_for(100_000), FEED, t0);
        drain(&mut s);
        s.handle_channel_closed([1; 32]);
        assert!(s.is_uploading(), "another channel's close changes nothing");
        s.handle_channel_closed(discovery_key(&FEED));
        assert!(!s.is_uploading());
        let (at, _) = tick(&mut s);
        s.handle_validation(&valid_for(100_000), FEED, at);
        assert_eq!(
            drain(&mut s)[0],
            Action::OpenFeed {
                buyer: BUYER,
                feed_key: FEED
            }
        );
    }
}
