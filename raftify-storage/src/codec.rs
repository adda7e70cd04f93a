//! Record framing shared by the LMDB values, snapshot files and archives.
//!
//! Every value this crate stores is `crc32 (u32, little endian) ++ payload`.
//! LMDB does not checksum its pages, so the checksum is what lets a reader
//! tell a damaged record from a valid one instead of handing garbage to raft.

use raftify_core::protobuf::Message;

pub(crate) use raftify_core::codec::crc32;

/// `crc32(payload) ++ payload`.
pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks a framed value and returns its payload.
pub(crate) fn unframe(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < 4 {
        return Err(format!(
            "record of {} bytes is shorter than its 4-byte checksum",
            bytes.len()
        ));
    }
    let (head, payload) = bytes.split_at(4);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(head);
    let stored = u32::from_le_bytes(crc);
    let actual = crc32(payload);
    if stored != actual {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        ));
    }
    Ok(payload)
}

/// Encodes a protobuf message (without framing).
pub(crate) fn encode_msg<M: Message>(msg: &M) -> Result<Vec<u8>, String> {
    msg.write_to_bytes()
        .map_err(|e| format!("cannot encode {}: {e}", M::descriptor_static().name()))
}

/// Decodes a protobuf message (without framing).
pub(crate) fn decode_msg<M: Message>(bytes: &[u8]) -> Result<M, String> {
    M::parse_from_bytes(bytes)
        .map_err(|e| format!("cannot decode {}: {e}", M::descriptor_static().name()))
}

/// Unframes and decodes a protobuf message.
pub(crate) fn decode_framed<M: Message>(bytes: &[u8]) -> Result<M, String> {
    decode_msg(unframe(bytes)?)
}

/// Reads a big-endian u64 at `at`.
pub(crate) fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let slice = bytes.get(at..at + 8)?;
    let mut buf = [0u8; 8];
    buf.copy_from_slice(slice);
    Some(u64::from_be_bytes(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_reference_value() {
        // The well-known check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn unframe_detects_damage() {
        let mut framed = frame(b"hello");
        assert_eq!(unframe(&framed).unwrap(), b"hello");
        framed[5] ^= 1;
        assert!(unframe(&framed).unwrap_err().contains("checksum mismatch"));
        assert!(unframe(&[1, 2]).unwrap_err().contains("shorter"));
    }
}
