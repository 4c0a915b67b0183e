//! Learning a few facts about a backend reply while it streams to the client.
//!
//! Replies are forwarded as their bytes arrive and are never held whole: a
//! single `find` or `getMore` reply can be tens of megabytes. The proxy still
//! wants to know whether the command succeeded (`ok`, `code`) and which cursor
//! it opened or continued (`cursor.id`, `cursor.ns`). mongod puts `cursor.id`
//! *after* the batch of documents, so waiting for it by buffering would mean
//! buffering the batch.
//!
//! [`ReplyScanner`] is therefore an incremental state machine over one OP_MSG
//! wire message. It reads only element headers and the handful of values it
//! cares about, and steps over everything else by its declared BSON length
//! without looking at it. Its whole state lives inline in the struct (a few
//! hundred bytes, no heap), whatever the size or shape of the input.
//!
//! Bad input never panics and never makes the scanner wait on bytes that
//! cannot belong to the message: at the first inconsistency it stops and keeps
//! only what it had already learned.

/// The opcode of OP_MSG, the only message kind scanned.
const OP_MSG: i32 = 2013;
/// MsgHeader: messageLength, requestID, responseTo, opCode.
const HEADER_LEN: usize = 16;
/// OP_MSG flag bit: the server will send more replies without being asked.
const MORE_TO_COME: u32 = 1 << 1;
/// Keys longer than this cannot be one we look for, so they are not kept.
const KEY_MAX: usize = 16;
/// Longest `cursor.ns` kept, in bytes (without its NUL).
const NS_MAX: usize = 256;
/// Largest value read into `pending`: a maximal `ns` with its NUL.
const PENDING_MAX: usize = NS_MAX + 1;

/// What the scanner learned of one reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplySummary {
    /// Top-level `ok` (double, int32, int64 or bool) was truthy (non-zero / true).
    pub ok: Option<bool>,
    /// Top-level `code` (int32/int64/double, read as i32).
    pub code: Option<i32>,
    /// `cursor.id` (int64, or int32) of a top-level `cursor` sub-document.
    pub cursor_id: Option<i64>,
    /// The reply's OP_MSG flags had moreToCome (bit 1).
    pub more_to_come: bool,
}

/// The values we look for, named by where they sit in the reply body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Ok,
    Code,
    Cursor,
    CursorId,
    Ns,
}

/// Where the scanner is in the message; each state reads one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The 16-byte MsgHeader.
    Header,
    /// OP_MSG flagBits.
    Flags,
    /// One section's kind byte.
    SectionKind,
    /// The size of a kind-1 (document sequence) section.
    SequenceSize,
    /// The rest of a kind-1 section, discarded.
    SkipSequence,
    /// The body document's length prefix.
    BodySize,
    /// An element's type byte, or the terminator of the open document.
    ElementType,
    /// An element's key (a cstring); `ty` is the element's type.
    Key { ty: u8 },
    /// A fixed-size number or bool destined for `field`.
    Scalar { ty: u8, field: Field },
    /// The int32 that starts a variable-size value.
    Length { ty: u8, field: Option<Field> },
    /// `cursor.ns`: `len` bytes, NUL included.
    NsBytes { len: usize },
    /// A value we do not want, discarded.
    SkipValue,
    /// The cstrings of a regex value, discarded; `left` still to go.
    SkipCStrings { left: u8 },
    /// Finished, or gave up on bad input: every further byte is ignored.
    Done,
}

/// How many bytes the current state wants.
#[derive(Debug, Clone, Copy)]
enum Need {
    /// Exactly this many, gathered into `pending`.
    Fixed(usize),
    /// Up to and including the next NUL.
    CString,
    /// `skip_left` bytes, thrown away.
    Skip,
}

/// How a BSON value of some type is laid out after its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Always this many bytes.
    Fixed(u32),
    /// An int32 `len` (at least `min`), then `len + adjust` more bytes.
    Prefixed { min: i32, adjust: i64 },
    /// Two cstrings.
    Regex,
    /// A type byte BSON does not define: the stream cannot be followed.
    Unknown,
}

fn layout(ty: u8) -> Layout {
    match ty {
        0x06 | 0x0A | 0x7F | 0xFF => Layout::Fixed(0),
        0x08 => Layout::Fixed(1),
        0x10 => Layout::Fixed(4),
        0x01 | 0x09 | 0x11 | 0x12 => Layout::Fixed(8),
        0x07 => Layout::Fixed(12),
        0x13 => Layout::Fixed(16),
        // string, JS code, symbol: the length counts the bytes and NUL.
        0x02 | 0x0D | 0x0E => Layout::Prefixed { min: 1, adjust: 0 },
        // binary: a subtype byte follows the length.
        0x05 => Layout::Prefixed { min: 0, adjust: 1 },
        // document, array, code with scope: the length counts itself.
        0x03 | 0x04 => Layout::Prefixed { min: 5, adjust: -4 },
        0x0F => Layout::Prefixed {
            min: 14,
            adjust: -4,
        },
        // DBPointer: a string then a 12-byte ObjectId.
        0x0C => Layout::Prefixed { min: 1, adjust: 12 },
        0x0B => Layout::Regex,
        _ => Layout::Unknown,
    }
}

/// The field a key names at this nesting depth (1 = body, 2 = `cursor`).
fn field_for(depth: usize, key: &[u8]) -> Option<Field> {
    match (depth, key) {
        (1, b"ok") => Some(Field::Ok),
        (1, b"code") => Some(Field::Code),
        (1, b"cursor") => Some(Field::Cursor),
        (2, b"id") => Some(Field::CursorId),
        (2, b"ns") => Some(Field::Ns),
        _ => None,
    }
}

/// Whether a value of type `ty` is one we read for `field`; others are skipped.
fn accepts(field: Field, ty: u8) -> bool {
    match field {
        Field::Ok => matches!(ty, 0x01 | 0x08 | 0x10 | 0x12),
        Field::Code => matches!(ty, 0x01 | 0x10 | 0x12),
        Field::CursorId => matches!(ty, 0x10 | 0x12),
        Field::Cursor => ty == 0x03,
        Field::Ns => ty == 0x02,
    }
}

/// A scalar value as read off the wire.
#[derive(Debug, Clone, Copy)]
enum Number {
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl Number {
    fn truthy(self) -> bool {
        match self {
            Number::Int(v) => v != 0,
            Number::Double(v) => v != 0.0,
            Number::Bool(v) => v,
        }
    }

    fn as_i64(self) -> Option<i64> {
        match self {
            Number::Int(v) => Some(v),
            // `as` saturates; keep the value only when it was a whole number in range.
            Number::Double(v) => Some(v as i64).filter(|&i| i as f64 == v),
            Number::Bool(_) => None,
        }
    }
}

/// Incremental scanner over one reply wire message; see the module docs.
#[derive(Debug, Clone)]
pub struct ReplyScanner {
    state: State,
    summary: ReplySummary,
    /// Bytes still allowed in the message (index 0), the body (1) and the
    /// `cursor` sub-document (2); every byte consumed is charged to each open
    /// one, so no declared length can be overrun.
    left: [u32; 3],
    /// How many containers inside the message are open: 0 outside the body,
    /// 1 in the body, 2 inside `cursor`.
    depth: usize,
    /// The bytes of the item being read (keys: only their first KEY_MAX).
    pending: [u8; PENDING_MAX],
    /// How long the item being read is so far (may exceed what is kept).
    have: usize,
    /// Bytes still to throw away in a skip state.
    skip_left: u32,
    ns: [u8; NS_MAX],
    ns_len: Option<usize>,
}

impl Default for ReplyScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyScanner {
    pub fn new() -> Self {
        ReplyScanner {
            state: State::Header,
            summary: ReplySummary::default(),
            // The message length is unknown until the header is read.
            left: [u32::MAX, 0, 0],
            depth: 0,
            pending: [0; PENDING_MAX],
            have: 0,
            skip_left: 0,
            ns: [0; NS_MAX],
            ns_len: None,
        }
    }

    /// Feeds the next chunk of the message. Chunks may split it anywhere.
    /// Never panics and never allocates, whatever the input; bytes after the
    /// body document (or after the scanner gave up) are ignored.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let Some(need) = self.need() else { return };
            let n = self.amount(need, chunk);
            // Every round consumes at least one byte, so feeding always ends.
            let Some((now, rest)) = chunk.split_at_checked(n).filter(|_| n > 0) else {
                self.state = State::Done;
                return;
            };
            if !self.charge(n) {
                self.state = State::Done;
                return;
            }
            if self.absorb(need, now) {
                self.advance();
            }
            chunk = rest;
        }
    }

    /// The summary so far (complete once the whole message was fed).
    pub fn summary(&self) -> ReplySummary {
        self.summary
    }

    /// `cursor.ns` when seen and at most 256 bytes long, else None.
    pub fn ns(&self) -> Option<&str> {
        let bytes = self.ns.get(..self.ns_len?)?;
        std::str::from_utf8(bytes).ok()
    }

    fn need(&self) -> Option<Need> {
        Some(match self.state {
            State::Header => Need::Fixed(HEADER_LEN),
            State::Flags | State::SequenceSize | State::BodySize | State::Length { .. } => {
                Need::Fixed(4)
            }
            State::SectionKind | State::ElementType => Need::Fixed(1),
            State::Scalar { ty, .. } => match layout(ty) {
                Layout::Fixed(n) => Need::Fixed(usize::try_from(n).ok()?),
                _ => return None,
            },
            State::NsBytes { len } => Need::Fixed(len),
            State::Key { .. } | State::SkipCStrings { .. } => Need::CString,
            State::SkipSequence | State::SkipValue => Need::Skip,
            State::Done => return None,
        })
    }

    /// How much of `chunk` the current item takes.
    fn amount(&self, need: Need, chunk: &[u8]) -> usize {
        let wanted = match need {
            Need::Fixed(n) => n.saturating_sub(self.have),
            Need::CString => chunk
                .iter()
                .position(|&b| b == 0)
                .map_or(usize::MAX, |i| i + 1),
            Need::Skip => usize::try_from(self.skip_left).unwrap_or(usize::MAX),
        };
        wanted.min(chunk.len())
    }

    /// Charges `n` consumed bytes to the message and every open document;
    /// false when that would overrun any of them.
    fn charge(&mut self, n: usize) -> bool {
        let Ok(n) = u32::try_from(n) else {
            return false;
        };
        for left in self.left.iter_mut().take(self.depth + 1) {
            let Some(rest) = left.checked_sub(n) else {
                return false;
            };
            *left = rest;
        }
        true
    }

    /// Takes in the bytes of the current item; true once the item is whole.
    fn absorb(&mut self, need: Need, now: &[u8]) -> bool {
        match need {
            Need::Fixed(n) => {
                self.store(now, PENDING_MAX);
                self.have >= n
            }
            Need::CString => match now.split_last() {
                Some((0, text)) => {
                    self.store(text, KEY_MAX);
                    true
                }
                _ => {
                    self.store(now, KEY_MAX);
                    false
                }
            },
            Need::Skip => {
                let n = u32::try_from(now.len()).unwrap_or(u32::MAX);
                self.skip_left = self.skip_left.saturating_sub(n);
                self.skip_left == 0
            }
        }
    }

    /// Appends to `pending` what fits below `cap`; counts all of it in `have`.
    fn store(&mut self, bytes: &[u8], cap: usize) {
        let room = cap.saturating_sub(self.have).min(bytes.len());
        let end = self.have.saturating_add(room);
        if let (Some(dst), Some(src)) = (self.pending.get_mut(self.have..end), bytes.get(..room)) {
            dst.copy_from_slice(src);
        }
        self.have = self.have.saturating_add(bytes.len());
    }

    /// Acts on the item just completed and moves to the next state.
    fn advance(&mut self) {
        let next = match self.state {
            State::Header => self.on_header(),
            State::Flags => self.on_flags(),
            State::SectionKind => match self.pending.first() {
                Some(0) => State::BodySize,
                Some(1) => State::SequenceSize,
                _ => State::Done,
            },
            State::SequenceSize => self.on_sequence_size(),
            State::SkipSequence => State::SectionKind,
            State::BodySize => self
                .i32_at(0)
                .map_or(State::Done, |len| self.open_document(len)),
            State::ElementType => self.on_element_type(),
            State::Key { ty } => self.on_key(ty),
            State::Scalar { ty, field } => self.on_scalar(ty, field),
            State::Length { ty, field } => self.on_length(ty, field),
            State::NsBytes { len } => self.on_ns(len),
            State::SkipValue | State::SkipCStrings { left: 0 | 1 } => State::ElementType,
            State::SkipCStrings { left } => State::SkipCStrings { left: left - 1 },
            State::Done => State::Done,
        };
        self.have = 0;
        self.state = next;
    }

    fn on_header(&mut self) -> State {
        let (Some(len), Some(op)) = (self.i32_at(0), self.i32_at(12)) else {
            return State::Done;
        };
        // After the header an OP_MSG holds at least flags and one section kind.
        let rest = i64::from(len) - HEADER_LEN as i64;
        match (op, u32::try_from(rest), self.left.first_mut()) {
            (OP_MSG, Ok(rest @ 5..), Some(left)) => {
                *left = rest;
                State::Flags
            }
            _ => State::Done,
        }
    }

    fn on_flags(&mut self) -> State {
        let Some(flags) = self.array_at(0).map(u32::from_le_bytes) else {
            return State::Done;
        };
        self.summary.more_to_come = flags & MORE_TO_COME != 0;
        State::SectionKind
    }

    fn on_sequence_size(&mut self) -> State {
        // The size counts itself and is followed by at least an identifier.
        match self.i32_at(0) {
            Some(size @ 5..) => {
                self.skip(i64::from(size) - 4, State::SkipSequence, State::SectionKind)
            }
            _ => State::Done,
        }
    }

    fn on_element_type(&mut self) -> State {
        match self.pending.first() {
            Some(0) => self.close_document(),
            Some(&ty) if layout(ty) != Layout::Unknown => State::Key { ty },
            _ => State::Done,
        }
    }

    fn on_key(&mut self, ty: u8) -> State {
        let key = self
            .pending
            .get(..self.have)
            .filter(|_| self.have <= KEY_MAX);
        let field = key
            .and_then(|key| field_for(self.depth, key))
            .filter(|&field| accepts(field, ty));
        match (field, layout(ty)) {
            (Some(field @ (Field::Ok | Field::Code | Field::CursorId)), _) => {
                State::Scalar { ty, field }
            }
            (field, Layout::Prefixed { .. }) => State::Length { ty, field },
            (_, Layout::Fixed(n)) => self.skip(i64::from(n), State::SkipValue, State::ElementType),
            (_, Layout::Regex) => State::SkipCStrings { left: 2 },
            (_, Layout::Unknown) => State::Done,
        }
    }

    fn on_scalar(&mut self, ty: u8, field: Field) -> State {
        let Some(value) = self.number(ty) else {
            return State::Done;
        };
        match field {
            Field::Ok => self.summary.ok = Some(value.truthy()),
            Field::Code => self.summary.code = value.as_i64().and_then(|v| i32::try_from(v).ok()),
            Field::CursorId => self.summary.cursor_id = value.as_i64(),
            Field::Cursor | Field::Ns => {}
        }
        State::ElementType
    }

    fn on_length(&mut self, ty: u8, field: Option<Field>) -> State {
        let (Some(len), Layout::Prefixed { min, adjust }) = (self.i32_at(0), layout(ty)) else {
            return State::Done;
        };
        if len < min {
            return State::Done;
        }
        match (field, usize::try_from(len)) {
            (Some(Field::Cursor), _) => self.open_document(len),
            // A longer ns is skipped like any other value: `ns()` stays None.
            (Some(Field::Ns), Ok(len)) if len <= PENDING_MAX => State::NsBytes { len },
            _ => self.skip(
                i64::from(len) + adjust,
                State::SkipValue,
                State::ElementType,
            ),
        }
    }

    fn on_ns(&mut self, len: usize) -> State {
        // A BSON string ends in NUL; anything else means we lost our place.
        let Some((0, text)) = self.pending.get(..len).and_then(|b| b.split_last()) else {
            return State::Done;
        };
        if let Some(dst) = self.ns.get_mut(..text.len()) {
            dst.copy_from_slice(text);
            self.ns_len = Some(text.len());
        }
        State::ElementType
    }

    /// Enters a document whose length prefix (already consumed) says `len`.
    fn open_document(&mut self, len: i32) -> State {
        // What follows the prefix: elements and the terminator, at least 1 byte,
        // and no more than the enclosing container has left.
        let inner = u32::try_from(i64::from(len) - 4)
            .ok()
            .filter(|&n| n >= 1 && n <= self.innermost());
        match (inner, self.left.get_mut(self.depth + 1)) {
            (Some(inner), Some(slot)) => {
                *slot = inner;
                self.depth += 1;
                State::ElementType
            }
            _ => State::Done,
        }
    }

    /// Leaves the innermost document after its terminator byte.
    fn close_document(&mut self) -> State {
        // Its declared length must be used up exactly.
        if self.innermost() != 0 {
            return State::Done;
        }
        self.depth = self.depth.saturating_sub(1);
        // Closing the body ends the part of the message we care about.
        if self.depth == 0 {
            State::Done
        } else {
            State::ElementType
        }
    }

    /// Starts throwing away `n` bytes in `skipping`, then goes on to `after`.
    fn skip(&mut self, n: i64, skipping: State, after: State) -> State {
        match u32::try_from(n) {
            Ok(0) => after,
            Ok(n) if n <= self.innermost() => {
                self.skip_left = n;
                skipping
            }
            _ => State::Done,
        }
    }

    /// Bytes left in the innermost open container.
    fn innermost(&self) -> u32 {
        self.left.get(self.depth).copied().unwrap_or(0)
    }

    /// `N` bytes of `pending` from offset `at`.
    fn array_at<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        self.pending.get(at..at.checked_add(N)?)?.try_into().ok()
    }

    fn i32_at(&self, at: usize) -> Option<i32> {
        self.array_at(at).map(i32::from_le_bytes)
    }

    /// The scalar of type `ty` held in `pending`.
    fn number(&self, ty: u8) -> Option<Number> {
        match ty {
            0x01 => Some(Number::Double(f64::from_le_bytes(self.array_at(0)?))),
            0x08 => Some(Number::Bool(*self.pending.first()? != 0)),
            0x10 => Some(Number::Int(self.i32_at(0)?.into())),
            0x12 => Some(Number::Int(i64::from_le_bytes(self.array_at(0)?))),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::expect_used,
    clippy::panic
)]
mod tests {
    use super::*;
    use bson::{doc, Bson, Document};

    /// A whole OP_MSG with one kind-0 section holding `body`.
    fn op_msg(flags: u32, body: &[u8]) -> Vec<u8> {
        message(2013, &[&flags.to_le_bytes()[..], &[0], body].concat())
    }

    fn message(op_code: i32, payload: &[u8]) -> Vec<u8> {
        let len = i32::try_from(HEADER_LEN + payload.len()).unwrap();
        let mut m = Vec::new();
        for field in [len, 7, 3, op_code] {
            m.extend_from_slice(&field.to_le_bytes());
        }
        m.extend_from_slice(payload);
        m
    }

    fn reply(body: &Document) -> Vec<u8> {
        op_msg(0, &body.to_vec().unwrap())
    }

    /// Scans `msg` fed in chunks whose sizes cycle through `sizes`.
    fn scan_in(msg: &[u8], sizes: &[usize]) -> ReplyScanner {
        let mut scanner = ReplyScanner::new();
        let mut rest = msg;
        for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at(size.min(rest.len()));
            scanner.feed(now);
            rest = later;
        }
        scanner
    }

    fn scan(msg: &[u8]) -> ReplyScanner {
        let mut scanner = ReplyScanner::new();
        scanner.feed(msg);
        scanner
    }

    fn find_reply(batch: Vec<Bson>, id: i64, ns: &str) -> Document {
        doc! {
            "cursor": { "firstBatch": batch, "id": id, "ns": ns },
            "ok": 1.0,
        }
    }

    fn small_batch() -> Vec<Bson> {
        (0..5)
            .map(|i| {
                Bson::Document(doc! { "_id": i, "name": format!("doc {i}"), "tags": ["a", "b"] })
            })
            .collect()
    }

    /// A deterministic pseudo-random sequence (an LCG), enough for fuzzing.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }

        fn below(&mut self, n: usize) -> usize {
            self.next() as usize % n.max(1)
        }
    }

    fn expect_find(scanner: &ReplyScanner, id: i64, ns: &str) {
        let s = scanner.summary();
        assert_eq!(s.ok, Some(true));
        assert_eq!(s.code, None);
        assert_eq!(s.cursor_id, Some(id));
        assert!(!s.more_to_come);
        assert_eq!(scanner.ns(), Some(ns));
    }

    #[test]
    fn find_reply_gives_cursor_id_and_ns() {
        let msg = reply(&find_reply(small_batch(), 1234567890123, "shop.orders"));
        expect_find(&scan(&msg), 1234567890123, "shop.orders");
    }

    #[test]
    fn find_reply_fed_one_byte_at_a_time() {
        let msg = reply(&find_reply(small_batch(), -42, "shop.orders"));
        expect_find(&scan_in(&msg, &[1]), -42, "shop.orders");
    }

    #[test]
    fn find_reply_fed_in_assorted_chunks() {
        let msg = reply(&find_reply(small_batch(), 99, "db.c"));
        for sizes in [&[1, 7, 3, 64][..], &[2, 5, 11], &[16, 1], &[3], &[1000]] {
            expect_find(&scan_in(&msg, sizes), 99, "db.c");
        }
    }

    #[test]
    fn huge_first_batch_is_skipped_in_bounded_memory() {
        let big = "x".repeat(100_000);
        let batch = (0..50)
            .map(|i| Bson::Document(doc! { "_id": i, "blob": big.as_str() }))
            .collect();
        let msg = reply(&find_reply(batch, 77, "big.coll"));
        assert!(msg.len() > 5_000_000);
        expect_find(&scan_in(&msg, &[1, 7, 3, 64, 65536, 4096]), 77, "big.coll");
        expect_find(&scan(&msg), 77, "big.coll");
        // All state is inline; nothing grows with the input.
        assert!(std::mem::size_of::<ReplyScanner>() <= 1024);
    }

    #[test]
    fn get_more_reply_with_exhausted_cursor() {
        let body = doc! {
            "cursor": { "nextBatch": small_batch(), "id": 0_i64, "ns": "shop.orders" },
            "ok": 1.0,
        };
        expect_find(&scan_in(&reply(&body), &[5, 1]), 0, "shop.orders");
    }

    #[test]
    fn error_reply_gives_ok_false_and_code() {
        let body = doc! {
            "ok": 0.0,
            "errmsg": "cursor id 123 not found",
            "code": 43,
            "codeName": "CursorNotFound",
        };
        let s = scan(&reply(&body)).summary();
        assert_eq!(s.ok, Some(false));
        assert_eq!(s.code, Some(43));
        assert_eq!(s.cursor_id, None);
    }

    #[test]
    fn ok_and_code_in_other_types() {
        let cases: [(Bson, Option<bool>); 7] = [
            (Bson::Int32(1), Some(true)),
            (Bson::Int32(0), Some(false)),
            (Bson::Int64(1), Some(true)),
            (Bson::Boolean(true), Some(true)),
            (Bson::Boolean(false), Some(false)),
            (Bson::Double(0.0), Some(false)),
            (Bson::String("1".into()), None),
        ];
        for (ok, want) in cases {
            let s = scan(&reply(&doc! { "ok": ok.clone() })).summary();
            assert_eq!(s.ok, want, "{ok:?}");
        }
        assert_eq!(
            scan(&reply(&doc! { "code": 11000_i64 })).summary().code,
            Some(11000)
        );
        assert_eq!(
            scan(&reply(&doc! { "code": 13.0 })).summary().code,
            Some(13)
        );
        assert_eq!(scan(&reply(&doc! { "code": 1.5 })).summary().code, None);
        assert_eq!(
            scan(&reply(&doc! { "code": i64::MAX })).summary().code,
            None
        );
    }

    #[test]
    fn more_to_come_flag() {
        let body = doc! { "ok": 1 }.to_vec().unwrap();
        assert!(scan(&op_msg(MORE_TO_COME, &body)).summary().more_to_come);
        assert!(!scan(&op_msg(1 << 16, &body)).summary().more_to_come);
    }

    #[test]
    fn cursor_id_as_int32() {
        let body = doc! { "cursor": { "firstBatch": [], "id": 5_i32, "ns": "a.b" }, "ok": 1 };
        expect_find(&scan(&reply(&body)), 5, "a.b");
    }

    #[test]
    fn other_opcodes_are_ignored() {
        let body = doc! { "ok": 1, "code": 2, "cursor": { "id": 3_i64, "ns": "a.b" } }
            .to_vec()
            .unwrap();
        let payload = [&0_u32.to_le_bytes()[..], &[0], &body].concat();
        for op in [1, 2004, 2012, 2010] {
            let scanner = scan(&message(op, &payload));
            assert_eq!(scanner.summary(), ReplySummary::default());
            assert_eq!(scanner.ns(), None);
        }
    }

    #[test]
    fn document_sequence_before_body_is_skipped() {
        let doc = doc! { "ok": 0, "code": 9 }.to_vec().unwrap();
        let mut sequence = b"documents\0".to_vec();
        sequence.extend_from_slice(&doc);
        let size = i32::try_from(4 + sequence.len()).unwrap();
        let body = doc! { "ok": 1 }.to_vec().unwrap();
        let payload = [
            &0_u32.to_le_bytes()[..],
            &[1],
            &size.to_le_bytes(),
            &sequence,
            &[0],
            &body,
        ]
        .concat();
        let s = scan_in(&message(2013, &payload), &[3]).summary();
        assert_eq!(s.ok, Some(true));
        assert_eq!(s.code, None);
    }

    #[test]
    fn bytes_after_the_body_are_ignored() {
        let mut msg = reply(&doc! { "ok": 1 });
        // A CRC-32C trailer, then junk that must not be read as anything.
        msg.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x01, b'o', b'k', 0]);
        msg.extend_from_slice(&0.0_f64.to_le_bytes());
        assert_eq!(scan(&msg).summary().ok, Some(true));
    }

    #[test]
    fn long_keys_are_skipped() {
        let long = "k".repeat(300);
        let ok_prefixed = format!("ok{}", "x".repeat(KEY_MAX));
        let body = doc! {
            long.as_str(): 1,
            ok_prefixed.as_str(): 0,
            "cursor": { long.as_str(): "v", "id": 8_i64, "ns": "a.b" },
            "ok": 1,
        };
        expect_find(&scan_in(&reply(&body), &[1, 7, 3, 64]), 8, "a.b");
    }

    #[test]
    fn unknown_type_stops_but_keeps_earlier_fields() {
        let body = doc! { "ok": 1, "code": 5, "x": 1, "cursor": { "id": 3_i64, "ns": "a.b" } };
        let mut bytes = body.to_vec().unwrap();
        let at = bytes.windows(3).position(|w| w == b"\x10x\0").unwrap();
        bytes[at] = 0x20;
        let scanner = scan(&op_msg(0, &bytes));
        let s = scanner.summary();
        assert_eq!((s.ok, s.code, s.cursor_id), (Some(true), Some(5), None));
        assert_eq!(scanner.ns(), None);
        assert_eq!(scanner.state, State::Done);
    }

    #[test]
    fn long_ns_is_dropped_but_id_is_read() {
        let ns = format!("db.{}", "c".repeat(NS_MAX - 3));
        let body = doc! { "cursor": { "firstBatch": [], "ns": ns.as_str(), "id": 6_i64 }, "ok": 1 };
        expect_find(&scan_in(&reply(&body), &[1]), 6, &ns);

        let ns = format!("db.{}", "c".repeat(NS_MAX - 2));
        let body = doc! { "cursor": { "firstBatch": [], "ns": ns.as_str(), "id": 6_i64 }, "ok": 1 };
        let scanner = scan_in(&reply(&body), &[1, 7, 3, 64]);
        assert_eq!(scanner.summary().cursor_id, Some(6));
        assert_eq!(scanner.summary().ok, Some(true));
        assert_eq!(scanner.ns(), None);
    }

    #[test]
    fn cursor_must_be_top_level() {
        let body = doc! {
            "other": { "cursor": { "id": 5_i64, "ns": "x.y" }, "ok": 0 },
            "list": [{ "cursor": { "id": 6_i64 } }],
            "ok": 1,
        };
        let scanner = scan(&reply(&body));
        assert_eq!(scanner.summary().cursor_id, None);
        assert_eq!(scanner.summary().ok, Some(true));
        assert_eq!(scanner.ns(), None);
    }

    #[test]
    fn id_and_ns_must_be_inside_cursor() {
        let body = doc! { "id": 5_i64, "ns": "x.y", "cursor": "not a document", "ok": 1 };
        let scanner = scan(&reply(&body));
        assert_eq!(scanner.summary().cursor_id, None);
        assert_eq!(scanner.summary().ok, Some(true));
        assert_eq!(scanner.ns(), None);
    }

    #[test]
    fn skips_every_bson_type() {
        let body = doc! {
            "d": 1.5, "s": "str", "o": { "a": 1 }, "a": [1, 2], "bin": Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1, 2, 3] }),
            "u": Bson::Undefined, "oid": bson::oid::ObjectId::new(), "b": true, "dt": bson::DateTime::now(), "n": Bson::Null,
            "re": Bson::RegularExpression(bson::Regex { pattern: "a.*b".try_into().unwrap(), options: "i".try_into().unwrap() }),
            "js": Bson::JavaScriptCode("f()".into()), "sym": Bson::Symbol("sym".into()),
            "jsws": Bson::JavaScriptCodeWithScope(bson::JavaScriptCodeWithScope { code: "g()".into(), scope: doc! { "x": 1 } }),
            "i": 1, "ts": Bson::Timestamp(bson::Timestamp { time: 1, increment: 2 }), "l": 2_i64,
            "dec": Bson::Decimal128(bson::Decimal128::from_bytes([7; 16])), "min": Bson::MinKey, "max": Bson::MaxKey,
            "cursor": { "firstBatch": [], "ns": "t.t", "id": 11_i64, "pad": Bson::Null },
            "ok": 1, "code": 0,
        };
        let scanner = scan_in(&reply(&body), &[1, 2, 3]);
        let s = scanner.summary();
        assert_eq!((s.ok, s.code, s.cursor_id), (Some(true), Some(0), Some(11)));
        assert_eq!(scanner.ns(), Some("t.t"));
        // The body's terminator was reached in step with its declared length.
        assert_eq!(scanner.state, State::Done);
        assert_eq!(scanner.depth, 0);
    }

    #[test]
    fn db_pointer_is_skipped() {
        let mut bytes = doc! { "p": "a.b", "ok": 1 }.to_vec().unwrap();
        // Turn the string "p" into a DBPointer by retyping it and adding an ObjectId.
        let at = bytes.windows(3).position(|w| w == b"\x02p\0").unwrap();
        bytes[at] = 0x0C;
        let end = at + 3 + 4 + 4;
        bytes.splice(end..end, [9_u8; 12]);
        let len = i32::try_from(bytes.len()).unwrap();
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        assert_eq!(scan(&op_msg(0, &bytes)).summary().ok, Some(true));
    }

    #[test]
    fn every_prefix_is_safe_and_consistent() {
        let msg = reply(&find_reply(small_batch(), 31, "db.c"));
        let full = scan(&msg);
        for end in 0..msg.len() {
            for sizes in [&[1][..], &[7, 3]] {
                let part = scan_in(&msg[..end], sizes);
                let (s, f) = (part.summary(), full.summary());
                assert!(s.ok.is_none() || s.ok == f.ok);
                assert!(s.cursor_id.is_none() || s.cursor_id == f.cursor_id);
                assert!(part.ns().is_none() || part.ns() == full.ns());
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Lcg(0x5eed);
        let valid = reply(&find_reply(small_batch(), 31, "db.c"));
        for round in 0..600 {
            let bytes: Vec<u8> = match round % 3 {
                // Pure noise.
                0 => (0..rng.below(2000)).map(|_| rng.next() as u8).collect(),
                // A plausible header followed by noise, so the body parser sees it.
                1 => {
                    let noise: Vec<u8> = (0..rng.below(600)).map(|_| rng.next() as u8).collect();
                    op_msg(rng.next(), &noise)
                }
                // A valid reply with a few bytes changed.
                _ => {
                    let mut m = valid.clone();
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(m.len());
                        m[at] = rng.next() as u8;
                    }
                    m
                }
            };
            let sizes = [1 + rng.below(5), 1 + rng.below(100)];
            let scanner = scan_in(&bytes, &sizes);
            let _ = (scanner.summary(), scanner.ns());
        }
    }

    #[test]
    fn absurd_lengths_stop_scanning() {
        let mut bytes = doc! { "ok": 1 }.to_vec().unwrap();
        bytes[..4].copy_from_slice(&i32::MAX.to_le_bytes());
        let scanner = scan(&op_msg(0, &bytes));
        assert_eq!(scanner.state, State::Done);
        assert_eq!(scanner.summary().ok, None);

        let mut bytes = doc! { "a": "b", "ok": 1 }.to_vec().unwrap();
        let at = bytes.windows(3).position(|w| w == b"\x02a\0").unwrap();
        bytes[at + 3..at + 7].copy_from_slice(&(-5_i32).to_le_bytes());
        let scanner = scan(&op_msg(0, &bytes));
        assert_eq!(scanner.state, State::Done);
        assert_eq!(scanner.summary().ok, None);
    }
}
