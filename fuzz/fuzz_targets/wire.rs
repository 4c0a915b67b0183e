//! Every message parser over arbitrary bytes: the header (with its length
//! limit), OP_MSG (flags, sections, checksum), OP_QUERY and OP_REPLY. Must
//! never panic; a one-body OP_MSG without checksum must re-encode to the
//! same bytes. Run from fuzz/: `cargo fuzz run wire corpus/wire seeds/wire` (new inputs go to the first, git-ignored, folder).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mongo_oidc_proxy::wire::{self, Frame, OpCode, OpMsg, OpQuery};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = Frame::from_bytes(Bytes::copy_from_slice(data), 1 << 20) else {
        return;
    };
    match frame.header.op_code {
        OpCode::Msg => {
            if let Ok(msg) = OpMsg::parse(&frame.bytes) {
                let _ = msg.command_name();
                let walked = msg.sequences().count();
                assert_eq!(walked, msg.sequence_count());
                for seq in msg.sequences() {
                    for doc in seq.documents() {
                        let _ = doc.map(|d| d.iter().count());
                    }
                }
                if walked == 0 && !msg.flags.checksum_present() {
                    let again = wire::op_msg::encode(
                        frame.header.request_id,
                        frame.header.response_to,
                        msg.flags.0,
                        msg.body,
                    );
                    assert_eq!(again, &frame.bytes[..], "OP_MSG round trip");
                }
            }
        }
        OpCode::Query => {
            if let Ok(q) = OpQuery::parse(&frame.bytes) {
                let _ = q.command_database();
                let _ = wire::op_msg::first_key(q.query);
            }
        }
        OpCode::Reply => {
            let _ = wire::op_query::parse_reply(&frame.bytes);
        }
        _ => {}
    }
});
