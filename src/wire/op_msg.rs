//! OP_MSG (opcode 2013): flag bits, one kind-0 body, any number of kind-1
//! document sequences, and an optional CRC-32C trailer.

use bson::RawDocument;

use super::header::{finish_message, start_message};
use super::{OpCode, Reader, WireError, HEADER_LEN};

/// The most document sequences one message may carry. Real commands use one
/// (`documents`, `updates`, `deletes`) or two (`bulkWrite`'s `ops`, `nsInfo`).
pub const MAX_SEQUENCES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpMsgFlags(pub u32);

impl OpMsgFlags {
    pub const CHECKSUM_PRESENT: u32 = 1 << 0;
    pub const MORE_TO_COME: u32 = 1 << 1;
    pub const EXHAUST_ALLOWED: u32 = 1 << 16;
    /// Bits 0-15 are "required": a receiver must refuse ones it does not know.
    const KNOWN_REQUIRED: u32 = Self::CHECKSUM_PRESENT | Self::MORE_TO_COME;

    pub fn checksum_present(self) -> bool {
        self.0 & Self::CHECKSUM_PRESENT != 0
    }
    pub fn more_to_come(self) -> bool {
        self.0 & Self::MORE_TO_COME != 0
    }
    pub fn exhaust_allowed(self) -> bool {
        self.0 & Self::EXHAUST_ALLOWED != 0
    }
}

/// One kind-1 section: an identifier naming a command field and its documents.
#[derive(Debug, Clone, Copy)]
pub struct DocSequence<'a> {
    pub identifier: &'a str,
    documents: &'a [u8],
}

impl<'a> DocSequence<'a> {
    pub fn documents(&self) -> impl Iterator<Item = Result<&'a RawDocument, WireError>> + 'a {
        let mut r = Reader::new(self.documents, "document sequence");
        std::iter::from_fn(move || {
            if r.is_empty() {
                None
            } else {
                Some(r.document())
            }
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Section<'a> {
    Body(&'a RawDocument),
    Sequence(DocSequence<'a>),
}

/// A parsed OP_MSG borrowing from its frame. Parsing validates the section
/// structure once; [`OpMsg::sequences`] walks it again without allocating.
#[derive(Debug, Clone, Copy)]
pub struct OpMsg<'a> {
    pub flags: OpMsgFlags,
    pub body: &'a RawDocument,
    sections: &'a [u8],
    sequence_count: usize,
}

impl<'a> OpMsg<'a> {
    /// Parses the bytes after the header of an OP_MSG. `message` is the whole
    /// message, header included, so the checksum can be verified.
    pub fn parse(message: &'a [u8]) -> Result<OpMsg<'a>, WireError> {
        let body_bytes = message.get(HEADER_LEN..).ok_or(WireError::Truncated {
            what: "OP_MSG",
            need: HEADER_LEN,
            have: message.len(),
        })?;
        let mut r = Reader::new(body_bytes, "OP_MSG flags");
        let flags = OpMsgFlags(r.u32()?);
        let unknown_required = flags.0 & 0xFFFF & !OpMsgFlags::KNOWN_REQUIRED;
        if unknown_required != 0 {
            return Err(WireError::ReservedFlags(unknown_required));
        }
        let mut sections = r.take(r.remaining())?;
        if flags.checksum_present() {
            sections = verify_checksum(message, sections)?;
        }
        let (body, sequence_count) = walk_sections(sections)?;
        Ok(OpMsg {
            flags,
            body,
            sections,
            sequence_count,
        })
    }

    pub fn sequence_count(&self) -> usize {
        self.sequence_count
    }

    pub fn sequences(&self) -> impl Iterator<Item = DocSequence<'a>> + 'a {
        let mut r = Reader::new(self.sections, "OP_MSG section");
        std::iter::from_fn(move || loop {
            // The structure was validated by `parse`; errors cannot occur here,
            // and if they did the walk would simply end.
            match read_section(&mut r).ok()? {
                Section::Sequence(seq) => return Some(seq),
                Section::Body(_) => continue,
            }
        })
    }

    /// The command name: the body's first key.
    pub fn command_name(&self) -> Result<&'a str, WireError> {
        first_key(self.body)
    }
}

/// The first key of a command document, which names the command.
pub fn first_key(doc: &RawDocument) -> Result<&str, WireError> {
    match doc.iter().next() {
        Some(Ok((key, _))) => Ok(key.as_str()),
        Some(Err(e)) => Err(WireError::InvalidBson {
            what: "command",
            detail: e.to_string(),
        }),
        None => Err(WireError::InvalidBson {
            what: "command",
            detail: "the command document is empty".into(),
        }),
    }
}

fn verify_checksum<'a>(message: &[u8], sections: &'a [u8]) -> Result<&'a [u8], WireError> {
    let split = sections.len().checked_sub(4).ok_or(WireError::Truncated {
        what: "OP_MSG checksum",
        need: 4,
        have: sections.len(),
    })?;
    let (rest, trailer) = sections.split_at(split);
    let expected = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let computed = crc32c::crc32c(&message[..message.len() - 4]);
    if expected != computed {
        return Err(WireError::ChecksumMismatch { expected, computed });
    }
    Ok(rest)
}

fn walk_sections(sections: &[u8]) -> Result<(&RawDocument, usize), WireError> {
    let mut r = Reader::new(sections, "OP_MSG section");
    let mut body = None;
    let mut bodies = 0;
    let mut sequences = 0;
    while !r.is_empty() {
        match read_section(&mut r)? {
            Section::Body(doc) => {
                bodies += 1;
                body.get_or_insert(doc);
            }
            Section::Sequence(seq) => {
                sequences += 1;
                if sequences > MAX_SEQUENCES {
                    return Err(WireError::TooManySequences(MAX_SEQUENCES));
                }
                for doc in seq.documents() {
                    doc?;
                }
            }
        }
    }
    match (body, bodies) {
        (Some(doc), 1) => Ok((doc, sequences)),
        _ => Err(WireError::BodyCount(bodies)),
    }
}

fn read_section<'a>(r: &mut Reader<'a>) -> Result<Section<'a>, WireError> {
    match r.u8()? {
        0 => Ok(Section::Body(r.document()?)),
        1 => {
            let size = r.peek_i32()?;
            if size < 5 {
                return Err(WireError::Truncated {
                    what: "document sequence",
                    need: 5,
                    have: size.max(0) as usize,
                });
            }
            let mut seq = Reader::new(r.take(size as usize)?, "document sequence");
            seq.i32()?;
            let identifier = seq.cstr().map_err(|_| WireError::InvalidIdentifier)?;
            let documents = seq.take(seq.remaining())?;
            Ok(Section::Sequence(DocSequence {
                identifier,
                documents,
            }))
        }
        kind => Err(WireError::UnknownSectionKind(kind)),
    }
}

/// What a reply says of its command: `ok`, and the error code when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyStatus {
    pub ok: bool,
    /// `code` of a failed command, else the code of its first write error
    /// or of its write-concern error; `None` for a clean success.
    pub code: Option<i32>,
}

impl ReplyStatus {
    /// Reads `ok` and the codes from a reply document; `None` without `ok`.
    pub fn of(doc: &RawDocument) -> Option<ReplyStatus> {
        use bson::raw::RawBsonRef;
        fn field<'d>(d: &'d RawDocument, key: &str) -> Option<RawBsonRef<'d>> {
            d.get(key).ok().flatten()
        }
        let code_of = |d: &RawDocument| {
            field(d, "code")
                .and_then(super::bson_integer)
                .and_then(|c| i32::try_from(c).ok())
        };
        let ok = match field(doc, "ok")? {
            RawBsonRef::Boolean(b) => b,
            RawBsonRef::Double(v) => v != 0.0,
            other => super::bson_integer(other)? != 0,
        };
        let code = if !ok {
            code_of(doc)
        } else {
            let first_write_error = match field(doc, "writeErrors") {
                Some(RawBsonRef::Array(errors)) => match errors.into_iter().next() {
                    Some(Ok(RawBsonRef::Document(e))) => code_of(e),
                    _ => None,
                },
                _ => None,
            };
            first_write_error.or_else(|| match field(doc, "writeConcernError") {
                Some(RawBsonRef::Document(e)) => code_of(e),
                _ => None,
            })
        };
        Some(ReplyStatus { ok, code })
    }
}

/// The status of an OP_MSG reply from its first bytes (header included),
/// when its first section is a body that `prefix` holds whole; `None`
/// otherwise. Reads only what is there: for the audit trail, which must not
/// make the relay wait for or buffer a reply.
pub fn reply_status(prefix: &[u8]) -> Option<ReplyStatus> {
    let mut r = Reader::new(prefix.get(HEADER_LEN..)?, "OP_MSG reply");
    let flags = OpMsgFlags(r.u32().ok()?);
    if flags.0 & 0xFFFF & !OpMsgFlags::KNOWN_REQUIRED != 0 || r.u8().ok()? != 0 {
        return None;
    }
    ReplyStatus::of(r.document().ok()?)
}

/// Encodes a one-body OP_MSG. Replies built by the proxy never carry a checksum.
pub fn encode(request_id: i32, response_to: i32, flags: u32, body: &RawDocument) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 5 + body.as_bytes().len());
    let at = start_message(&mut out, request_id, response_to, OpCode::Msg);
    out.extend_from_slice(&(flags & !OpMsgFlags::CHECKSUM_PRESENT).to_le_bytes());
    out.push(0);
    out.extend_from_slice(body.as_bytes());
    finish_message(&mut out, at);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn with_sections(flags: u32, sections: &[u8], checksum: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let at = start_message(&mut out, 1, 0, OpCode::Msg);
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(sections);
        if checksum {
            out.extend_from_slice(&[0; 4]);
            finish_message(&mut out, at);
            let n = out.len();
            let crc = crc32c::crc32c(&out[..n - 4]);
            out[n - 4..].copy_from_slice(&crc.to_le_bytes());
        } else {
            finish_message(&mut out, at);
        }
        out
    }

    fn body_section(doc: &bson::RawDocumentBuf) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(doc.as_bytes());
        v
    }

    fn sequence_section(id: &str, docs: &[bson::RawDocumentBuf]) -> Vec<u8> {
        let mut payload = Vec::new();
        payload.extend_from_slice(id.as_bytes());
        payload.push(0);
        for d in docs {
            payload.extend_from_slice(d.as_bytes());
        }
        let mut v = vec![1u8];
        v.extend_from_slice(&((payload.len() + 4) as i32).to_le_bytes());
        v.extend(payload);
        v
    }

    #[test]
    fn round_trips_a_body() {
        let doc = rawdoc! { "ping": 1, "$db": "admin" };
        let msg = encode(5, 9, 0, &doc);
        let parsed = OpMsg::parse(&msg).unwrap();
        assert_eq!(parsed.body.as_bytes(), doc.as_bytes());
        assert_eq!(parsed.command_name().unwrap(), "ping");
        assert_eq!(parsed.sequence_count(), 0);
    }

    #[test]
    fn reads_document_sequences() {
        let body = rawdoc! { "insert": "c", "$db": "t" };
        let docs = [rawdoc! { "a": 1 }, rawdoc! { "a": 2 }];
        let mut sections = body_section(&body);
        sections.extend(sequence_section("documents", &docs));
        let msg = with_sections(0, &sections, false);
        let parsed = OpMsg::parse(&msg).unwrap();
        let seqs: Vec<_> = parsed.sequences().collect();
        assert_eq!(seqs.len(), 1);
        assert_eq!(seqs[0].identifier, "documents");
        assert_eq!(seqs[0].documents().count(), 2);
    }

    #[test]
    fn verifies_checksum_when_present() {
        let sections = body_section(&rawdoc! { "ping": 1 });
        let mut msg = with_sections(OpMsgFlags::CHECKSUM_PRESENT, &sections, true);
        assert!(OpMsg::parse(&msg).is_ok());
        let n = msg.len();
        msg[n - 1] ^= 0xff;
        assert!(matches!(
            OpMsg::parse(&msg),
            Err(WireError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn refuses_unknown_required_flag_bits_but_not_optional_ones() {
        let sections = body_section(&rawdoc! { "ping": 1 });
        assert_eq!(
            OpMsg::parse(&with_sections(1 << 2, &sections, false)).unwrap_err(),
            WireError::ReservedFlags(4)
        );
        assert!(OpMsg::parse(&with_sections(
            1 << 20 | OpMsgFlags::EXHAUST_ALLOWED,
            &sections,
            false
        ))
        .is_ok());
    }

    #[test]
    fn requires_exactly_one_body() {
        let b = body_section(&rawdoc! { "ping": 1 });
        assert_eq!(
            OpMsg::parse(&with_sections(0, &[], false)).unwrap_err(),
            WireError::BodyCount(0)
        );
        let two = [b.clone(), b].concat();
        assert_eq!(
            OpMsg::parse(&with_sections(0, &two, false)).unwrap_err(),
            WireError::BodyCount(2)
        );
    }

    #[test]
    fn refuses_unknown_section_kinds_and_bad_lengths() {
        assert_eq!(
            OpMsg::parse(&with_sections(0, &[7, 0, 0], false)).unwrap_err(),
            WireError::UnknownSectionKind(7)
        );
        // A body whose declared length runs past the message.
        let err = OpMsg::parse(&with_sections(0, &[0, 50, 0, 0, 0, 0], false)).unwrap_err();
        assert!(
            matches!(err, WireError::Truncated { need: 50, .. }),
            "{err:?}"
        );
        // A body whose declared length is negative.
        let err =
            OpMsg::parse(&with_sections(0, &[0, 0xff, 0xff, 0xff, 0xff, 0], false)).unwrap_err();
        assert!(matches!(err, WireError::InvalidBson { .. }), "{err:?}");
        // A sequence with a negative size.
        let err = OpMsg::parse(&with_sections(0, &[1, 0xff, 0xff, 0xff, 0xff], false)).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Truncated {
                    what: "document sequence",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn refuses_too_many_sequences() {
        let mut sections = body_section(&rawdoc! { "insert": "c" });
        for _ in 0..=MAX_SEQUENCES {
            sections.extend(sequence_section("documents", &[]));
        }
        assert_eq!(
            OpMsg::parse(&with_sections(0, &sections, false)).unwrap_err(),
            WireError::TooManySequences(MAX_SEQUENCES)
        );
    }

    #[test]
    fn an_empty_command_has_no_name() {
        let msg = encode(1, 0, 0, &rawdoc! {});
        let parsed = OpMsg::parse(&msg).unwrap();
        assert!(parsed.command_name().is_err());
    }

    #[test]
    fn a_message_shorter_than_its_flags_is_truncated() {
        let mut msg = with_sections(0, &[], false);
        msg.truncate(18);
        assert!(matches!(
            OpMsg::parse(&msg),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn reply_status_reads_ok_and_the_error_code() {
        let status = |doc: bson::RawDocumentBuf| reply_status(&encode(1, 2, 0, &doc));
        let ok = |code| Some(ReplyStatus { ok: true, code });
        let failed = |code| Some(ReplyStatus { ok: false, code });
        assert_eq!(status(rawdoc! { "n": 1, "ok": 1.0 }), ok(None));
        assert_eq!(status(rawdoc! { "ok": 1 }), ok(None));
        assert_eq!(status(rawdoc! { "ok": true }), ok(None));
        assert_eq!(
            status(
                rawdoc! { "ok": 0.0, "errmsg": "not authorized", "code": 13, "codeName": "Unauthorized" }
            ),
            failed(Some(13))
        );
        assert_eq!(
            status(rawdoc! { "ok": 0, "code": 11600_i64 }),
            failed(Some(11600))
        );
        assert_eq!(status(rawdoc! { "ok": 0 }), failed(None));
        assert_eq!(
            status(
                rawdoc! { "n": 0, "writeErrors": [{ "index": 0, "code": 11000, "errmsg": "dup" }], "ok": 1 }
            ),
            ok(Some(11000))
        );
        assert_eq!(
            status(rawdoc! { "n": 1, "writeConcernError": { "code": 64 }, "ok": 1 }),
            ok(Some(64))
        );
        assert_eq!(status(rawdoc! { "cursor": { "id": 0_i64 } }), None, "no ok");
        assert_eq!(status(rawdoc! { "ok": "yes" }), None);
    }

    #[test]
    fn reply_status_reads_only_a_complete_first_body() {
        let reply = encode(1, 2, 0, &rawdoc! { "ok": 0, "code": 13 });
        for cut in 0..reply.len() {
            assert_eq!(reply_status(&reply[..cut]), None, "cut at {cut}");
        }
        assert!(reply_status(&reply).is_some());
        // A document sequence first: not looked into.
        let seq = with_sections(0, &[1, 9, 0, 0, 0, b'x', 0, 5, 0, 0, 0], false);
        assert_eq!(reply_status(&seq), None);
        // Unknown required flag bits: not a reply the proxy understands.
        let mut flagged = reply.clone();
        flagged[HEADER_LEN] = 0x04;
        assert_eq!(reply_status(&flagged), None);
        // The bytes after the first body (a checksum, more sections) do not matter.
        let mut longer = reply.clone();
        longer.extend_from_slice(&[0xff; 8]);
        assert_eq!(
            reply_status(&longer),
            Some(ReplyStatus {
                ok: false,
                code: Some(13)
            })
        );
    }
}
