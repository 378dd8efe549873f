//! Link framing: fixed-size packet frames on a byte stream (TCP).
//!
//! A frame is an 8-byte header and one packet:
//!
//! ```text
//! 0      2        3      4              8                 8 + PACKET_SIZE
//! | "MU" | version | kind | length (u32 BE) | packet bytes ... |
//! ```
//!
//! `version` is [`FRAME_VERSION`], `kind` is [`FRAME_KIND_PACKET`], and
//! `length` must equal [`PACKET_SIZE`]. Anything else is an error and the
//! link should be closed: the stream cannot be resynchronised, and the
//! decoder never reserves more than one frame, so an attacker cannot make it
//! allocate a size of their choosing.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::Error;
use crate::packet::{PACKET_SIZE, Packet};

/// Magic bytes that open every frame.
pub const FRAME_MAGIC: [u8; 2] = *b"MU";
/// The frame format version.
pub const FRAME_VERSION: u8 = 1;
/// Frame kind: a Sphinx packet.
pub const FRAME_KIND_PACKET: u8 = 1;
/// Bytes of the frame header.
pub const FRAME_HEADER_SIZE: usize = 8;
/// Bytes of a whole frame on the wire.
pub const FRAME_SIZE: usize = FRAME_HEADER_SIZE + PACKET_SIZE;

/// Encodes and decodes packet frames. Stateless.
#[derive(Clone, Copy, Debug, Default)]
pub struct PacketCodec;

impl PacketCodec {
    /// The frame header for a packet.
    pub const fn header() -> [u8; FRAME_HEADER_SIZE] {
        let len = (PACKET_SIZE as u32).to_be_bytes();
        [
            FRAME_MAGIC[0],
            FRAME_MAGIC[1],
            FRAME_VERSION,
            FRAME_KIND_PACKET,
            len[0],
            len[1],
            len[2],
            len[3],
        ]
    }
}

impl Decoder for PacketCodec {
    type Item = Packet;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, Error> {
        if src.len() < FRAME_HEADER_SIZE {
            // Check what has arrived of the header as early as possible.
            let have = src.len().min(4);
            if src[..have] != Self::header()[..have] {
                return Err(Error::BadFrameHeader);
            }
            src.reserve(FRAME_SIZE.saturating_sub(src.len()));
            return Ok(None);
        }
        if src[..4] != Self::header()[..4] {
            return Err(Error::BadFrameHeader);
        }
        let announced = u32::from_be_bytes([src[4], src[5], src[6], src[7]]);
        if announced as usize != PACKET_SIZE {
            return Err(Error::BadFrameLength {
                announced,
                expected: PACKET_SIZE,
            });
        }
        if src.len() < FRAME_SIZE {
            // Bounded: never more than one frame.
            src.reserve(FRAME_SIZE - src.len());
            return Ok(None);
        }
        src.advance(FRAME_HEADER_SIZE);
        let bytes = src.split_to(PACKET_SIZE).freeze();
        Packet::from_bytes(bytes).map(Some)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, Error> {
        match self.decode(buf)? {
            Some(packet) => Ok(Some(packet)),
            None if buf.is_empty() => Ok(None),
            None => Err(Error::TruncatedFrame {
                buffered: buf.len(),
            }),
        }
    }
}

impl Encoder<Packet> for PacketCodec {
    type Error = Error;

    fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<(), Error> {
        self.encode(&packet, dst)
    }
}

impl Encoder<&Packet> for PacketCodec {
    type Error = Error;

    fn encode(&mut self, packet: &Packet, dst: &mut BytesMut) -> Result<(), Error> {
        dst.reserve(FRAME_SIZE);
        dst.put_slice(&Self::header());
        dst.put_slice(packet.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn packet(fill: u8) -> Packet {
        Packet::from_bytes(Bytes::from(vec![fill; PACKET_SIZE])).unwrap()
    }

    #[test]
    fn frames_round_trip_across_arbitrary_splits() {
        let mut wire = BytesMut::new();
        for i in 0..3 {
            PacketCodec.encode(packet(i), &mut wire).unwrap();
        }
        let whole = wire.freeze();
        for split in [1, 7, 8, 100, FRAME_SIZE, FRAME_SIZE + 3] {
            let mut codec = PacketCodec;
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in whole.chunks(split) {
                buf.extend_from_slice(chunk);
                while let Some(p) = codec.decode(&mut buf).unwrap() {
                    out.push(p);
                }
            }
            assert_eq!(out, vec![packet(0), packet(1), packet(2)]);
            assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        }
    }

    #[test]
    fn bad_magic_is_refused_early() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(matches!(
            PacketCodec.decode(&mut buf),
            Err(Error::BadFrameHeader)
        ));
        let mut buf = BytesMut::from(&b"X"[..]);
        assert!(matches!(
            PacketCodec.decode(&mut buf),
            Err(Error::BadFrameHeader)
        ));
    }

    #[test]
    fn wrong_length_is_refused_without_allocating_it() {
        let mut header = PacketCodec::header();
        header[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut buf = BytesMut::from(&header[..]);
        match PacketCodec.decode(&mut buf) {
            Err(Error::BadFrameLength { announced, .. }) => assert_eq!(announced, u32::MAX),
            other => panic!("expected BadFrameLength, got {other:?}"),
        }
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn truncated_frame_at_eof_is_an_error() {
        let mut buf = BytesMut::new();
        PacketCodec.encode(packet(1), &mut buf).unwrap();
        buf.truncate(FRAME_SIZE - 10);
        assert!(PacketCodec.decode(&mut buf).unwrap().is_none());
        assert!(matches!(
            PacketCodec.decode_eof(&mut buf),
            Err(Error::TruncatedFrame { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_never_overallocate(data in proptest::collection::vec(any::<u8>(), 0..6000)) {
            let mut buf = BytesMut::from(&data[..]);
            let mut codec = PacketCodec;
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
            prop_assert!(buf.capacity() <= data.len().max(FRAME_SIZE) * 2);
        }
    }
}
