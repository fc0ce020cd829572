//! Serving gRPC clients that send the socket path as the HTTP/2 `:authority`.
//!
//! gRPC C-core (the Python, C++, Ruby and PHP clients) dialing `unix:///path/azure.sock` sends
//! the percent-encoded path (`tmp%2Fx%2Fazure.sock`) as `:authority`. The HTTP/2 server
//! (h2) refuses that as a malformed authority and resets the stream before any handler runs.
//! The authority means nothing on a unix socket, so this layer, on the bytes a client sends,
//! replaces an authority that is not a valid URI authority by `localhost`.
//!
//! It decodes every request header block (HPACK, with the client's dynamic table) but passes
//! the client's bytes through unchanged as long as every authority is valid: the Go client of
//! the Secrets Store CSI Driver sends `localhost` and never sees a difference. From the first
//! block that needs a fix on, each block is re-encoded with literals that are never indexed,
//! so the server's HPACK table stays consistent with what it was sent. Anything it cannot
//! follow (an unexpected preface, an oversized header block, a block that does not decode)
//! is passed through untouched for h2 to judge; if that happens after a rewrite, the
//! connection is failed instead, as the tables could no longer agree.

use std::borrow::Cow;

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame we emit (HTTP/2's default SETTINGS_MAX_FRAME_SIZE, which h2 keeps).
const MAX_FRAME: usize = 16_384;
/// Header blocks larger than this are passed through (h2 refuses them anyway).
const MAX_BLOCK: usize = 256 * 1024;
/// h2's default SETTINGS_HEADER_TABLE_SIZE: the most a client may grow its table to.
const HEADER_TABLE_SIZE: usize = 4096;

/// What the rewriter does with the client's bytes.
#[derive(Debug)]
enum State {
    /// Checking the connection preface; `usize` bytes of it seen.
    Preface(usize),
    /// Waiting for a frame header.
    FrameHeader,
    /// Forwarding the rest of a frame's payload.
    Forward(usize),
    /// Collecting a header block (HEADERS then CONTINUATION frames).
    Block,
    /// Not following the stream any more: everything is forwarded.
    Passthrough,
    /// The stream cannot be repaired: the connection must fail.
    Failed,
}

/// A header block being collected.
#[derive(Debug, Default)]
struct PendingBlock {
    /// The original frames, byte for byte (forwarded when no rewrite is needed).
    raw: Vec<u8>,
    /// The HPACK fragments, concatenated.
    fragment: Vec<u8>,
    stream_id: u32,
    end_stream: bool,
    /// Stream dependency and weight of a HEADERS frame with PRIORITY.
    priority: Option<[u8; 5]>,
}

/// Rewrites invalid `:authority` values in a client-to-server HTTP/2 byte stream.
pub struct AuthorityFix {
    state: State,
    /// Bytes received but not yet processed (an incomplete frame header or payload).
    pending: Vec<u8>,
    block: Option<PendingBlock>,
    decoder: loona_hpack::Decoder<'static>,
    /// Set once a block was re-encoded: all later blocks are re-encoded too.
    rewriting: bool,
    rewrites: u64,
}

impl Default for AuthorityFix {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self {
            state: State::Preface(0),
            pending: Vec::new(),
            block: None,
            decoder,
            rewriting: false,
            rewrites: 0,
        }
    }
}

/// The connection cannot continue (its header compression state was lost).
#[derive(Debug, thiserror::Error)]
#[error("HTTP/2 header block could not be decoded after an :authority rewrite")]
pub struct Broken;

impl AuthorityFix {
    pub fn new() -> Self {
        Self::default()
    }

    /// Header blocks re-encoded so far.
    pub fn rewrites(&self) -> u64 {
        self.rewrites
    }

    /// Consumes client bytes, appending what the server should read to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Broken> {
        if matches!(self.state, State::Passthrough) {
            out.extend_from_slice(input);
            return Ok(());
        }
        self.pending.extend_from_slice(input);
        let mut at = 0;
        loop {
            let avail = &self.pending[at..];
            match self.state {
                State::Failed => return Err(Broken),
                State::Passthrough => {
                    out.extend_from_slice(avail);
                    at = self.pending.len();
                    break;
                }
                State::Preface(seen) => {
                    let n = avail.len().min(PREFACE.len() - seen);
                    if n == 0 {
                        break;
                    }
                    if avail[..n] != PREFACE[seen..seen + n] {
                        self.state = State::Passthrough;
                        continue;
                    }
                    out.extend_from_slice(&avail[..n]);
                    at += n;
                    self.state = if seen + n == PREFACE.len() {
                        State::FrameHeader
                    } else {
                        State::Preface(seen + n)
                    };
                }
                State::FrameHeader => {
                    if avail.len() < FRAME_HEADER {
                        break;
                    }
                    let len = usize::from(avail[0]) << 16
                        | usize::from(avail[1]) << 8
                        | usize::from(avail[2]);
                    let kind = avail[3];
                    if (kind == HEADERS && self.block.is_none())
                        || (kind == CONTINUATION && self.block.is_some())
                    {
                        if len > MAX_BLOCK {
                            self.give_up(out)?;
                            continue;
                        }
                        self.state = State::Block;
                    } else if self.block.is_some() {
                        // Anything but CONTINUATION inside a block is a protocol error:
                        // let h2 see it as sent.
                        self.give_up(out)?;
                        continue;
                    } else {
                        out.extend_from_slice(&avail[..FRAME_HEADER]);
                        at += FRAME_HEADER;
                        self.state = State::Forward(len);
                    }
                }
                State::Forward(left) => {
                    let n = avail.len().min(left);
                    if n == 0 && left > 0 {
                        break;
                    }
                    out.extend_from_slice(&avail[..n]);
                    at += n;
                    self.state = if left == n {
                        State::FrameHeader
                    } else {
                        State::Forward(left - n)
                    };
                }
                State::Block => {
                    if avail.len() < FRAME_HEADER {
                        break;
                    }
                    let len = usize::from(avail[0]) << 16
                        | usize::from(avail[1]) << 8
                        | usize::from(avail[2]);
                    if avail.len() < FRAME_HEADER + len {
                        break;
                    }
                    let frame = avail[..FRAME_HEADER + len].to_vec();
                    at += FRAME_HEADER + len;
                    let done = self.add_frame(&frame);
                    let too_big = self.block.as_ref().is_some_and(|b| b.raw.len() > MAX_BLOCK);
                    match done {
                        None if too_big => {
                            self.give_up(out)?;
                            continue;
                        }
                        None => self.state = State::FrameHeader,
                        Some(false) => {
                            self.give_up(out)?;
                            continue;
                        }
                        Some(true) => {
                            self.finish_block(out)?;
                            self.state = State::FrameHeader;
                        }
                    }
                }
            }
        }
        self.pending.drain(..at);
        Ok(())
    }

    /// Stops following the stream: what was collected goes out as it came.
    fn give_up(&mut self, out: &mut Vec<u8>) -> Result<(), Broken> {
        if self.rewriting {
            self.state = State::Failed;
            return Err(Broken);
        }
        if let Some(b) = self.block.take() {
            out.extend_from_slice(&b.raw);
        }
        self.state = State::Passthrough;
        Ok(())
    }

    /// Adds a HEADERS or CONTINUATION frame to the block. `Some(true)` when the block is
    /// complete, `Some(false)` when the frame is malformed, `None` when more frames follow.
    fn add_frame(&mut self, frame: &[u8]) -> Option<bool> {
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        let block = self.block.get_or_insert_with(|| PendingBlock {
            stream_id,
            ..PendingBlock::default()
        });
        block.raw.extend_from_slice(frame);
        if block.stream_id != stream_id {
            return Some(false);
        }
        let fragment = if frame[3] == HEADERS {
            block.end_stream = flags & END_STREAM != 0;
            let mut p = payload;
            let mut pad = 0usize;
            if flags & PADDED != 0 {
                let Some((&n, rest)) = p.split_first() else {
                    return Some(false);
                };
                pad = usize::from(n);
                p = rest;
            }
            if flags & PRIORITY != 0 {
                if p.len() < 5 {
                    return Some(false);
                }
                let mut prio = [0u8; 5];
                prio.copy_from_slice(&p[..5]);
                block.priority = Some(prio);
                p = &p[5..];
            }
            if pad > p.len() {
                return Some(false);
            }
            &p[..p.len() - pad]
        } else {
            payload
        };
        block.fragment.extend_from_slice(fragment);
        (flags & END_HEADERS != 0).then_some(true)
    }

    /// Decodes a complete block and forwards it, re-encoded when needed.
    fn finish_block(&mut self, out: &mut Vec<u8>) -> Result<(), Broken> {
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut fix = false;
        let decoded =
            self.decoder
                .decode_with_cb(&block.fragment, |name: Cow<[u8]>, value: Cow<[u8]>| {
                    let mut value = value.into_owned();
                    if name.as_ref() == b":authority" && !valid_authority(&value) {
                        fix = true;
                        value = b"localhost".to_vec();
                    }
                    fields.push((name.into_owned(), value));
                });
        if decoded.is_err() {
            if self.rewriting {
                self.state = State::Failed;
                return Err(Broken);
            }
            out.extend_from_slice(&block.raw);
            self.state = State::Passthrough;
            return Ok(());
        }
        if !fix && !self.rewriting {
            out.extend_from_slice(&block.raw);
            return Ok(());
        }
        if fix && !self.rewriting {
            tracing::debug!(
                "rewriting an invalid HTTP/2 :authority (a gRPC C-core client on the unix socket) to localhost"
            );
        }
        self.rewriting = true;
        self.rewrites += 1;
        let mut hpack = Vec::new();
        for (name, value) in &fields {
            // Literal header field never indexed, new name (RFC 7541 6.2.3): the server's
            // dynamic table is left as it is.
            hpack.push(0x10);
            literal(name, &mut hpack);
            literal(value, &mut hpack);
        }
        write_block(&block, &hpack, out);
        Ok(())
    }
}

/// True when h2 accepts `value` as a URI authority.
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// A string literal without Huffman coding.
fn literal(bytes: &[u8], out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = loona_hpack::encoder::encode_integer_into(bytes.len(), 7, 0, out);
    out.extend_from_slice(bytes);
}

/// Frames `hpack` as HEADERS (+ CONTINUATION) for the block's stream.
fn write_block(block: &PendingBlock, hpack: &[u8], out: &mut Vec<u8>) {
    let prio = block.priority.map(|p| p.to_vec()).unwrap_or_default();
    let first_room = MAX_FRAME - prio.len();
    let (first, mut rest) = hpack.split_at(hpack.len().min(first_room));
    let mut flags = 0u8;
    if block.end_stream {
        flags |= END_STREAM;
    }
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frame_header(
        prio.len() + first.len(),
        HEADERS,
        flags,
        block.stream_id,
        out,
    );
    out.extend_from_slice(&prio);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        let flags = if tail.is_empty() { END_HEADERS } else { 0 };
        frame_header(chunk.len(), CONTINUATION, flags, block.stream_id, out);
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

fn frame_header(len: usize, kind: u8, flags: u8, stream_id: u32, out: &mut Vec<u8>) {
    let len = len as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_frame(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        frame_header(payload.len(), HEADERS, flags, stream, &mut f);
        f.extend_from_slice(payload);
        f
    }

    /// A request header block as C-core sends it: `:authority` literal with incremental
    /// indexing (static name index 1), so later requests refer to the table entry.
    fn request_block(authority: &[u8]) -> Vec<u8> {
        let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
        b.push(0x44); // :path, literal with indexing, name index 4
        literal(b"/v1alpha1.CSIDriverProvider/Version", &mut b);
        b.push(0x41); // :authority, literal with indexing, name index 1
        literal(authority, &mut b);
        b.push(0x40); // te: trailers, new name, with indexing
        literal(b"te", &mut b);
        literal(b"trailers", &mut b);
        b
    }

    fn decode_all(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        // A second decoder plays the server: it must see consistent blocks.
        let mut d = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut p = &bytes[PREFACE.len()..];
        let mut frag = Vec::new();
        while !p.is_empty() {
            let len = usize::from(p[0]) << 16 | usize::from(p[1]) << 8 | usize::from(p[2]);
            let (kind, flags) = (p[3], p[4]);
            let payload = &p[FRAME_HEADER..FRAME_HEADER + len];
            if kind == HEADERS || kind == CONTINUATION {
                let mut body = payload;
                if kind == HEADERS && flags & PRIORITY != 0 {
                    body = &body[5..];
                }
                frag.extend_from_slice(body);
                if flags & END_HEADERS != 0 {
                    blocks.push(d.decode(&frag).unwrap());
                    frag.clear();
                }
            }
            p = &p[FRAME_HEADER + len..];
        }
        blocks
    }

    fn run(fix: &mut AuthorityFix, input: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            fix.feed(c, &mut out).unwrap();
        }
        out
    }

    fn authority(block: &[(Vec<u8>, Vec<u8>)]) -> &[u8] {
        &block.iter().find(|(n, _)| n == b":authority").unwrap().1
    }

    #[test]
    fn valid_authority_passes_through_byte_for_byte() {
        let mut input = PREFACE.to_vec();
        input.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS
        input.extend(headers_frame(1, END_HEADERS, &request_block(b"localhost")));
        input.extend([0, 0, 5, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0]); // DATA, END_STREAM
        for chunk in [1, 7, 4096] {
            let mut fix = AuthorityFix::new();
            assert_eq!(run(&mut fix, &input, chunk), input, "chunk {chunk}");
            assert_eq!(fix.rewrites(), 0);
        }
    }

    #[test]
    fn socket_path_authority_becomes_localhost_and_tables_stay_consistent() {
        let mut input = PREFACE.to_vec();
        input.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
        input.extend(headers_frame(
            1,
            END_HEADERS,
            &request_block(b"tmp%2Fx%2Fazure.sock"),
        ));
        input.extend([0, 0, 5, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
        // Second request: everything from the dynamic table (indexes 62.. = newest first).
        input.extend(headers_frame(
            3,
            END_HEADERS | END_STREAM,
            &[0x83, 0x86, 0xc0, 0xbf, 0xbe],
        ));
        for chunk in [1, 3, 10, 4096] {
            let mut fix = AuthorityFix::new();
            let out = run(&mut fix, &input, chunk);
            assert_eq!(fix.rewrites(), 2, "chunk {chunk}");
            let blocks = decode_all(&out);
            assert_eq!(blocks.len(), 2);
            for b in &blocks {
                assert_eq!(authority(b), b"localhost");
                assert!(b.iter().any(|(n, v)| n == b"te" && v == b"trailers"));
                assert!(b
                    .iter()
                    .any(|(n, v)| n == b":path" && v == b"/v1alpha1.CSIDriverProvider/Version"));
            }
            // The DATA frame and the END_STREAM flag of the second HEADERS survive.
            assert!(out
                .windows(14)
                .any(|w| w == [0, 0, 5, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0]));
        }
    }

    #[test]
    fn padding_priority_and_continuation_are_handled() {
        let block = request_block(b"%2Fsock");
        let (a, b) = block.split_at(10);
        let mut payload = vec![3u8]; // pad length
        payload.extend([0x80, 0, 0, 1, 16]); // exclusive dependency on stream 1, weight 16
        payload.extend_from_slice(a);
        payload.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(5, PADDED | PRIORITY, &payload));
        let mut cont = Vec::new();
        frame_header(b.len(), CONTINUATION, END_HEADERS, 5, &mut cont);
        cont.extend_from_slice(b);
        input.extend(cont);
        let mut fix = AuthorityFix::new();
        let out = run(&mut fix, &input, 2);
        let blocks = decode_all(&out);
        assert_eq!(authority(&blocks[0]), b"localhost");
        // Priority kept, padding dropped.
        let first = &out[PREFACE.len()..];
        assert_eq!(first[4] & PRIORITY, PRIORITY);
        assert_eq!(first[4] & PADDED, 0);
        assert_eq!(&first[9..14], &[0x80, 0, 0, 1, 16]);
    }

    #[test]
    fn huge_blocks_are_split_into_continuations() {
        let mut block = request_block(b"%2F");
        block.push(0x00);
        literal(b"x-big", &mut block);
        literal(&vec![b'a'; 40_000], &mut block);
        let mut input = PREFACE.to_vec();
        let (a, b) = block.split_at(16_000);
        input.extend(headers_frame(1, 0, a));
        let mut cont = Vec::new();
        frame_header(b.len(), CONTINUATION, END_HEADERS, 1, &mut cont);
        cont.extend_from_slice(b);
        input.extend(cont);
        let mut fix = AuthorityFix::new();
        let out = run(&mut fix, &input, 1000);
        let blocks = decode_all(&out);
        assert_eq!(authority(&blocks[0]), b"localhost");
        assert_eq!(blocks[0].last().unwrap().1.len(), 40_000);
    }

    #[test]
    fn anything_else_is_passed_through() {
        // Not HTTP/2 at all.
        let mut fix = AuthorityFix::new();
        let junk = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(run(&mut fix, junk, 3), junk);
        // A block that does not decode goes to h2 as sent.
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(1, END_HEADERS, &[0xff, 0xff, 0xff]));
        input.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let mut fix = AuthorityFix::new();
        assert_eq!(run(&mut fix, &input, 5), input);
    }

    #[test]
    fn random_input_never_panics() {
        // A deterministic pseudo-random walk over frame shapes and bytes.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut input = PREFACE.to_vec();
            for _ in 0..(next() % 6) {
                let len = (next() % 64) as usize;
                let kind = [HEADERS, CONTINUATION, 0, 4][(next() % 4) as usize];
                let flags = (next() % 64) as u8;
                let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let mut f = Vec::new();
                frame_header(len, kind, flags, (next() % 4) as u32, &mut f);
                f.extend(payload);
                input.extend(f);
            }
            let mut fix = AuthorityFix::new();
            let mut out = Vec::new();
            for c in input.chunks(1 + (next() % 17) as usize) {
                if fix.feed(c, &mut out).is_err() {
                    break;
                }
            }
        }
    }
}
