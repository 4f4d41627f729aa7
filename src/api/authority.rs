//! Any HTTP/2 `:authority` on the Unix socket.
//!
//! gRPC clients put something of their own in `:authority` when they dial a
//! Unix socket: grpcio (C-core) the percent-encoded path (`tmp%2Fd.sock`),
//! grpc-java the raw path, others `localhost`. The `h2` crate under tonic
//! refuses a value that is not a valid URI authority and resets the stream, so
//! every call from those clients failed with INTERNAL unless their users knew
//! to set `authority=localhost`. On a Unix socket the value means nothing
//! (there is no host to name), so this adapter, wrapped around each Unix
//! connection only, replaces an invalid one with `localhost` before h2 reads
//! it. TCP listeners never see it.
//!
//! How: the client's bytes pass through unchanged except HEADERS frames (with
//! their CONTINUATIONs). Those are HPACK-decoded with a decoder that follows
//! the client's encoder, fixed, and encoded again with an encoder that never
//! refers to its dynamic table, so h2's decoder state cannot drift from ours.
//! Padding is dropped; priority and END_STREAM are kept; a block bigger than
//! one frame is split over CONTINUATIONs. Anything malformed is passed on
//! as it came, for h2 to refuse as it always did.
//!
//! It can go once h2 accepts such authorities itself (hyperium/h2 PR #487, or
//! an option to skip the check on a server).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer must accept (h2's default maximum): the
/// re-encoded block is cut into frames no bigger.
const MAX_FRAME: usize = 16_384;
/// The most a header block may gather over CONTINUATIONs before this gives
/// up on it (h2's own default limit on a header list is 16 KiB).
const MAX_BLOCK: usize = 1 << 20;
/// What an invalid authority becomes.
const LOCALHOST: &[u8] = b"localhost";

/// A header block being gathered from HEADERS and CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as they came, passed on untouched if the block cannot be
    /// decoded.
    raw: Vec<u8>,
}

/// A connection whose incoming header blocks get a valid `:authority`.
pub struct AnyAuthority<S> {
    inner: S,
    /// Client bytes read but not yet judged (a partial frame).
    input: Vec<u8>,
    /// Bytes ready for h2.
    output: Vec<u8>,
    sent: usize,
    /// Preface bytes still to pass through untouched.
    preface: usize,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    /// Once the stream is not HTTP/2 as expected, everything passes through.
    passthrough: bool,
    eof: bool,
}

impl<S> AnyAuthority<S> {
    pub fn new(inner: S) -> AnyAuthority<S> {
        let mut encoder = loona_hpack::Encoder::new();
        // Never index: h2's decoder then holds nothing we could refer to
        // wrongly, whatever it evicts.
        encoder.set_max_table_size(0);
        AnyAuthority {
            inner,
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            preface: PREFACE_LEN,
            block: None,
            decoder: loona_hpack::Decoder::new(),
            encoder,
            passthrough: false,
            eof: false,
        }
    }

    /// Moves whatever complete frames `input` holds to `output`.
    fn process(&mut self) {
        let mut at = 0;
        if self.preface > 0 || self.passthrough {
            let n = if self.passthrough {
                self.input.len()
            } else {
                self.preface.min(self.input.len())
            };
            self.output.extend_from_slice(&self.input[..n]);
            self.preface -= n.min(self.preface);
            at = n;
        }
        while !self.passthrough && self.input.len() - at >= FRAME_HEADER_LEN {
            let h = &self.input[at..at + FRAME_HEADER_LEN];
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let (kind, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let end = at + FRAME_HEADER_LEN + len;
            if self.input.len() < end {
                break;
            }
            let frame = &self.input[at..end];
            let payload = &frame[FRAME_HEADER_LEN..];
            match (kind, self.block.take()) {
                (HEADERS, None) => match headers_fragment(flags, payload) {
                    Some((priority, fragment)) => {
                        let block = Block {
                            stream,
                            end_stream: flags & END_STREAM != 0,
                            priority,
                            fragment: fragment.to_vec(),
                            raw: frame.to_vec(),
                        };
                        self.gathered(block, flags);
                    }
                    None => self.give_up(frame.to_vec()),
                },
                (CONTINUATION, Some(mut block))
                    if block.stream == stream && block.raw.len() + frame.len() <= MAX_BLOCK =>
                {
                    block.fragment.extend_from_slice(payload);
                    block.raw.extend_from_slice(frame);
                    self.gathered(block, flags);
                }
                (_, Some(block)) => {
                    // Not what HTTP/2 allows inside a header block: let h2
                    // see it all and refuse it.
                    let mut raw = block.raw;
                    raw.extend_from_slice(frame);
                    self.give_up(raw);
                }
                (_, None) => self.output.extend_from_slice(frame),
            }
            at = end;
        }
        self.input.drain(..at);
    }

    /// A block is complete (END_HEADERS) or waits for CONTINUATIONs.
    fn gathered(&mut self, block: Block, flags: u8) {
        if flags & END_HEADERS == 0 {
            self.block = Some(block);
            return;
        }
        match self.rewrite(&block.fragment) {
            Some(encoded) => self.emit(&block, &encoded),
            None => self.give_up(block.raw),
        }
    }

    /// Passes `raw` on and everything after it too: our HPACK state no longer
    /// follows the client's, so rewriting more would corrupt it.
    fn give_up(&mut self, raw: Vec<u8>) {
        self.output.extend_from_slice(&raw);
        self.passthrough = true;
    }

    /// The block decoded, `:authority` fixed, encoded again.
    fn rewrite(&mut self, fragment: &[u8]) -> Option<Vec<u8>> {
        let headers = self.decoder.decode(fragment).ok()?;
        let fixed = headers.iter().map(|(name, value)| {
            let value = if name == b":authority" && !valid_authority(value) {
                LOCALHOST
            } else {
                &value[..]
            };
            (&name[..], value)
        });
        Some(self.encoder.encode(fixed))
    }

    /// The new block as HEADERS (+ CONTINUATION) frames of at most
    /// [`MAX_FRAME`] bytes.
    fn emit(&mut self, block: &Block, encoded: &[u8]) {
        let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        let first_room = MAX_FRAME - priority.len();
        let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        self.frame(HEADERS, flags, block.stream, &[priority, first]);
        while !rest.is_empty() {
            let (chunk, more) = rest.split_at(rest.len().min(MAX_FRAME));
            let flags = if more.is_empty() { END_HEADERS } else { 0 };
            self.frame(CONTINUATION, flags, block.stream, &[chunk]);
            rest = more;
        }
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len = (len as u32).to_be_bytes();
        self.output
            .extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
        self.output.extend_from_slice(&stream.to_be_bytes());
        for p in parts {
            self.output.extend_from_slice(p);
        }
    }
}

/// A HEADERS payload's priority fields and header block fragment, without
/// padding; None when the lengths do not add up.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut body = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = *body.first()? as usize;
        body = &body[1..];
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let p: [u8; 5] = body.get(..5)?.try_into().ok()?;
        priority = Some(p);
        body = &body[5..];
    }
    let keep = body.len().checked_sub(pad)?;
    Some((priority, &body[..keep]))
}

/// What h2 accepts as `:authority` (it parses it as a URI authority).
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

impl<S: AsyncRead + Unpin> AsyncRead for AnyAuthority<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.sent < this.output.len() {
                let n = (this.output.len() - this.sent).min(buf.remaining());
                buf.put_slice(&this.output[this.sent..this.sent + n]);
                this.sent += n;
                if this.sent == this.output.len() {
                    this.output.clear();
                    this.sent = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // The client is done: what was held back goes as it
                    // came (h2 then sees the truncation it would have seen).
                    this.eof = true;
                    if let Some(block) = this.block.take() {
                        this.output.extend_from_slice(&block.raw);
                    }
                    let rest = std::mem::take(&mut this.input);
                    this.output.extend_from_slice(&rest);
                }
                Poll::Ready(Ok(())) => {
                    this.input.extend_from_slice(read.filled());
                    this.process();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnyAuthority<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Frames in, through the adapter, frames out: (kind, flags, stream,
    /// payload) of each.
    async fn through(bytes: Vec<u8>, split: usize) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let writer = tokio::spawn(async move {
            for chunk in bytes.chunks(split) {
                client.write_all(chunk).await.unwrap();
            }
            client.shutdown().await.unwrap();
            client
        });
        let mut adapted = AnyAuthority::new(server);
        let mut out = Vec::new();
        adapted.read_to_end(&mut out).await.unwrap();
        drop(writer.await.unwrap());
        assert_eq!(&out[..PREFACE_LEN], PREFACE);
        let mut frames = Vec::new();
        let mut at = PREFACE_LEN;
        while at < out.len() {
            let h = &out[at..at + 9];
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
            frames.push((h[3], h[4], stream, out[at + 9..at + 9 + len].to_vec()));
            at += 9 + len;
        }
        frames
    }

    fn decode_all(frames: &[(u8, u8, u32, Vec<u8>)]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        for (kind, flags, _, payload) in frames {
            if *kind == HEADERS || *kind == CONTINUATION {
                let (_, fragment) = if *kind == HEADERS {
                    headers_fragment(*flags, payload).unwrap()
                } else {
                    (None, &payload[..])
                };
                block.extend_from_slice(fragment);
                if flags & END_HEADERS != 0 {
                    blocks.push(decoder.decode(&block).unwrap());
                    block.clear();
                }
            }
        }
        blocks
    }

    fn request(authority: &[u8]) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", b"/obhost.v1.HostAgent/ListSteps".to_vec()),
            (b":authority", authority.to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
        ]
    }

    #[tokio::test]
    async fn an_invalid_authority_becomes_localhost_and_all_else_is_kept() {
        // The client's encoder indexes: its second block refers to entries of
        // the first, which only a decoder that followed it can resolve.
        let mut client = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        for (stream, authority) in [(1, &b"tmp%2Ft1%2Fd.sock"[..]), (3, b"/run/obhost/d.sock")] {
            let r = request(authority);
            let block = client.encode(r.iter().map(|(n, v)| (*n, &v[..])));
            // Padded, with priority: both must be understood.
            let mut payload = vec![2];
            payload.extend_from_slice(&[0, 0, 0, 0, 15]);
            payload.extend_from_slice(&block);
            payload.extend_from_slice(&[0, 0]);
            input.extend(frame(
                HEADERS,
                END_HEADERS | PADDED | PRIORITY,
                stream,
                &payload,
            ));
            input.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\0")); // DATA
        }
        let r = request(b"localhost:1");
        let block = client.encode(r.iter().map(|(n, v)| (*n, &v[..])));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &block));
        for split in [1, 7, 4096] {
            let frames = through(input.clone(), split).await;
            let kinds: Vec<u8> = frames.iter().map(|f| f.0).collect();
            assert_eq!(
                kinds,
                vec![0x4, HEADERS, 0x0, HEADERS, 0x0, HEADERS],
                "split {split}"
            );
            assert_eq!(frames[1].1, END_HEADERS | PRIORITY);
            assert_eq!(frames[1].3[..5], [0, 0, 0, 0, 15]);
            assert_eq!(frames[5].1, END_HEADERS | END_STREAM);
            assert_eq!(frames[2].3, b"\0\0\0\0\0");
            let blocks = decode_all(&frames);
            let authority = |b: &Vec<(Vec<u8>, Vec<u8>)>| {
                b.iter()
                    .find(|(n, _)| n == b":authority")
                    .unwrap()
                    .1
                    .clone()
            };
            assert_eq!(authority(&blocks[0]), b"localhost");
            assert_eq!(authority(&blocks[1]), b"localhost");
            assert_eq!(authority(&blocks[2]), b"localhost:1", "a valid one is kept");
            assert_eq!(blocks[1][2].1, b"/obhost.v1.HostAgent/ListSteps");
            assert_eq!(blocks[1].len(), 5);
        }
    }

    #[tokio::test]
    async fn a_block_over_continuations_and_a_big_one_are_framed_again() {
        let mut client = loona_hpack::Encoder::new();
        let mut r = request(b"a b");
        r.push((b"x-big", vec![b'v'; 40_000]));
        let block = client.encode(r.iter().map(|(n, v)| (*n, &v[..])));
        let mut input = PREFACE.to_vec();
        let (a, b) = block.split_at(10);
        input.extend(frame(HEADERS, 0, 1, a));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        let frames = through(input, 1000).await;
        assert!(frames.len() >= 3, "{}", frames.len());
        assert!(frames.iter().all(|f| f.3.len() <= MAX_FRAME));
        assert_eq!(frames[0].0, HEADERS);
        assert!(frames[1..].iter().all(|f| f.0 == CONTINUATION));
        assert!(frames.last().unwrap().1 & END_HEADERS != 0);
        let blocks = decode_all(&frames);
        assert_eq!(blocks[0][3].1, b"localhost");
        assert_eq!(blocks[0][5].1.len(), 40_000);
    }

    #[tokio::test]
    async fn what_is_not_a_header_block_passes_as_it_came() {
        let mut input = PREFACE.to_vec();
        // A HEADERS whose padding is longer than itself, then a PING.
        input.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 1, 2]));
        input.extend(frame(0x6, 0, 0, b"12345678"));
        let frames = through(input.clone(), 3).await;
        assert_eq!(frames[0].3, vec![9, 1, 2]);
        assert_eq!(frames[1].3, b"12345678");
        // Garbage HPACK: passed on untouched (h2 refuses it as before).
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff]));
        let frames = through(input, 64).await;
        assert_eq!(frames[0].3, vec![0xff, 0xff, 0xff, 0xff]);
    }
}
