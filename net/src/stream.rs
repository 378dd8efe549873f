//! [`LinkStream`]: an encrypted byte stream over an established link.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use murmur_wire::link::{
    MAX_MESSAGE, MAX_RECORD_PAYLOAD, RECORD_HEADER_SIZE, Record, TAG_SIZE, Transport,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Sealed bytes a writer may hold before it stops accepting more (a little
/// over one full record): writes then wait for the socket.
const WRITE_HIGH_WATER: usize = 2 * (MAX_MESSAGE + RECORD_HEADER_SIZE);
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 32 * 1024;

/// A byte stream whose bytes travel as sealed records of a
/// [`Transport`]: what one side writes, the other reads, in order, or the
/// stream fails (a record that does not open is an `InvalidData` error and
/// the connection must be dropped).
///
/// Each `poll_write` seals at most one record of up to
/// [`MAX_RECORD_PAYLOAD`] bytes, so a caller that writes in batches (a
/// `FramedWrite` with its buffer) pays one AEAD call per batch. The sending
/// key is replaced (a rekey record) every
/// [`murmur_wire::link::REKEY_AFTER_RECORDS`] records or `rekey_interval`,
/// whichever comes first.
pub struct LinkStream<S> {
    io: S,
    transport: Transport,
    /// Bytes read from `io`, not yet opened (whole records and a partial one).
    rbuf: BytesMut,
    /// Opened data not yet returned.
    plain: Vec<u8>,
    ppos: usize,
    /// Sealed records not yet written, from `wpos`.
    wbuf: Vec<u8>,
    wpos: usize,
    rekey_interval: Duration,
    last_rekey: Instant,
    peer_closed: bool,
}

impl<S> std::fmt::Debug for LinkStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkStream").finish_non_exhaustive()
    }
}

fn invalid(reason: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason)
}

impl<S> LinkStream<S> {
    /// Wraps `io`, whose handshake produced `transport`.
    pub fn new(io: S, transport: Transport, rekey_interval: Duration) -> Self {
        Self {
            io,
            transport,
            rbuf: BytesMut::new(),
            plain: Vec::new(),
            ppos: 0,
            wbuf: Vec::new(),
            wpos: 0,
            rekey_interval,
            last_rekey: Instant::now(),
            peer_closed: false,
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The underlying stream, mutably: bytes written to it directly bypass
    /// the link's encryption (the peer will refuse them; for tests).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Opens the next whole record buffered in `rbuf`, if there is one.
    /// `Ok(true)` if a record was consumed.
    fn open_buffered(&mut self) -> io::Result<bool> {
        let have = &self.rbuf[..];
        if have.len() < RECORD_HEADER_SIZE {
            return Ok(false);
        }
        let len = usize::from(u16::from_be_bytes([have[0], have[1]]));
        if len < TAG_SIZE {
            return Err(invalid("link record shorter than its tag"));
        }
        if have.len() < RECORD_HEADER_SIZE + len {
            return Ok(false);
        }
        let body = &have[RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + len];
        self.plain.resize(len, 0);
        match self.transport.open(body, &mut self.plain) {
            Ok(Record::Data(n)) => self.plain.truncate(n),
            Ok(Record::Rekeyed) => self.plain.clear(),
            Err(_) => {
                self.plain.clear();
                return Err(invalid("link record does not verify"));
            }
        }
        self.ppos = 0;
        self.rbuf.advance(RECORD_HEADER_SIZE + len);
        Ok(true)
    }
}

impl<S: AsyncWrite + Unpin> LinkStream<S> {
    /// Writes out sealed bytes until none are left or the socket would block.
    fn poll_write_sealed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LinkStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ppos < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.ppos);
                buf.put_slice(&this.plain[this.ppos..this.ppos + n]);
                this.ppos += n;
                return Poll::Ready(Ok(()));
            }
            if this.open_buffered()? {
                continue;
            }
            if this.peer_closed {
                return if this.rbuf.is_empty() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "link closed inside a record",
                    )))
                };
            }
            // The buffer holds at most one partial record plus a chunk.
            this.rbuf.reserve(READ_CHUNK);
            let got = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.rbuf
            ))?;
            if got == 0 {
                this.peer_closed = true;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LinkStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.wbuf.len() - this.wpos >= WRITE_HIGH_WATER {
            ready!(this.poll_write_sealed(cx))?;
        }
        if this.transport.should_rekey() || this.last_rekey.elapsed() >= this.rekey_interval {
            this.transport
                .seal_rekey(&mut this.wbuf)
                .map_err(|_| invalid("could not rekey the link"))?;
            this.last_rekey = Instant::now();
        }
        let n = data.len().min(MAX_RECORD_PAYLOAD);
        this.transport
            .seal(&data[..n], &mut this.wbuf)
            .map_err(|_| invalid("could not seal a link record"))?;
        // Start writing now; what the socket does not take waits for the
        // next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_write_sealed(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_write_sealed(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_write_sealed(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
