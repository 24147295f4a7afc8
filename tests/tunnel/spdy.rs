//! The SPDY/3.1 side of a kubelet's streaming server, for the test upstream (no kubelet
//! runs here, and no SPDY server crate exists): the framing of draft 3.1, header blocks
//! compressed with zlib and the protocol's preset dictionary, one stream per channel.
//! It serves a pod exec (`v4.channel.k8s.io`: stdout, stderr and the error stream with a
//! `Status`) and a port-forward (`portforward.k8s.io`: a data and an error stream per
//! connection; the pod's port is an echo server), as `kubectl` reaches them.

use std::collections::HashMap;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Header names of the preset dictionary, each written as a 4-byte length and the name.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The rest of the dictionary: status lines, dates and common values, unprefixed.
const DICTIONARY_TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411\
412413414415416417502504505203 Non-Authoritative Information204 No Content301 Moved \
Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server \
Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov \
Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,\
image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivate\
max-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

/// SPDY/3's preset zlib dictionary (1423 bytes).
pub fn dictionary() -> Vec<u8> {
    let mut out = Vec::with_capacity(1423);
    for word in DICTIONARY_WORDS {
        out.extend_from_slice(&(word.len() as u32).to_be_bytes());
        out.extend_from_slice(word.as_bytes());
    }
    out.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    out
}

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 0x01;
/// Larger frames are a broken peer here (kubectl's are a few KiB).
const MAX_FRAME: usize = 1 << 20;

#[derive(Debug)]
pub enum Frame {
    SynStream {
        id: u32,
        headers: HashMap<String, String>,
    },
    Data {
        id: u32,
        fin: bool,
        data: Vec<u8>,
    },
    Ping(u32),
    GoAway,
    /// Settings, window updates, resets: nothing this server acts on.
    Other,
}

/// One SPDY connection, server side.
pub struct Connection<IO> {
    io: IO,
    inflate: Decompress,
    deflate: Compress,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Connection<IO> {
    pub fn new(io: IO) -> Connection<IO> {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&dictionary())
            .expect("a fresh compressor takes a dictionary");
        Connection {
            io,
            inflate: Decompress::new(true),
            deflate,
        }
    }

    /// The next frame; `None` once the peer is gone.
    pub async fn read(&mut self) -> Option<Frame> {
        let mut head = [0u8; 8];
        self.io.read_exact(&mut head).await.ok()?;
        let flags = head[4];
        let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if length > MAX_FRAME {
            return None;
        }
        let mut body = vec![0u8; length];
        self.io.read_exact(&mut body).await.ok()?;
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            return Some(Frame::Data {
                id,
                fin: flags & FLAG_FIN != 0,
                data: body,
            });
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        Some(match kind {
            SYN_STREAM if body.len() >= 10 => {
                let id = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) & 0x7fff_ffff;
                Frame::SynStream {
                    id,
                    headers: self.header_block(&body[10..])?,
                }
            }
            PING if body.len() == 4 => {
                Frame::Ping(u32::from_be_bytes([body[0], body[1], body[2], body[3]]))
            }
            GOAWAY => Frame::GoAway,
            _ => Frame::Other,
        })
    }

    /// Inflates a header block (the connection's one zlib stream) and splits its pairs;
    /// a name with several values keeps the first.
    fn header_block(&mut self, compressed: &[u8]) -> Option<HashMap<String, String>> {
        let mut plain = Vec::with_capacity(4096);
        let mut used = 0;
        while used < compressed.len() {
            plain.reserve(4096);
            let before = self.inflate.total_in();
            let result =
                self.inflate
                    .decompress_vec(&compressed[used..], &mut plain, FlushDecompress::Sync);
            used += (self.inflate.total_in() - before) as usize;
            match result {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(&dictionary()).ok()?;
                }
                Err(_) => return None,
            }
        }
        let mut at = 0usize;
        let mut next = |n: usize| -> Option<&[u8]> {
            let slice = plain.get(at..at + n)?;
            at += n;
            Some(slice)
        };
        let count = u32::from_be_bytes(next(4)?.try_into().ok()?);
        let mut headers = HashMap::new();
        for _ in 0..count {
            let len = u32::from_be_bytes(next(4)?.try_into().ok()?) as usize;
            let name = String::from_utf8_lossy(next(len)?).into_owned();
            let len = u32::from_be_bytes(next(4)?.try_into().ok()?) as usize;
            let value = String::from_utf8_lossy(next(len)?).into_owned();
            let first = value.split('\0').next().unwrap_or_default().to_string();
            headers.insert(name, first);
        }
        Some(headers)
    }

    async fn control(&mut self, kind: u16, flags: u8, body: &[u8]) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(8 + body.len());
        frame.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
        frame.extend_from_slice(&kind.to_be_bytes());
        frame.push(flags);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(body);
        self.io.write_all(&frame).await?;
        self.io.flush().await
    }

    /// Accepts stream `id`: a SYN_REPLY with no headers.
    pub async fn reply(&mut self, id: u32) -> std::io::Result<()> {
        let mut compressed = Vec::with_capacity(64);
        self.deflate
            .compress_vec(&0u32.to_be_bytes(), &mut compressed, FlushCompress::Sync)
            .map_err(std::io::Error::other)?;
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&compressed);
        self.control(SYN_REPLY, 0, &body).await
    }

    pub async fn pong(&mut self, id: u32) -> std::io::Result<()> {
        self.control(PING, 0, &id.to_be_bytes()).await
    }

    /// Data on stream `id`; `fin` half-closes it from this side.
    pub async fn data(&mut self, id: u32, data: &[u8], fin: bool) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(8 + data.len());
        frame.extend_from_slice(&id.to_be_bytes());
        frame.push(if fin { FLAG_FIN } else { 0 });
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(data);
        self.io.write_all(&frame).await?;
        self.io.flush().await
    }
}

/// A pod exec over SPDY (`v4.channel.k8s.io`): once every stream the query asks for is
/// open, `spdy exec` and the exec's query on stdout (the WebSocket exec says `exec`, so a
/// test knows which transport ran) (then, with stdin, stdin echoed on stdout until
/// stdin ends), and the `Success` status on the error stream.
pub async fn serve_exec<IO: AsyncRead + AsyncWrite + Unpin>(io: IO, query: String) {
    let mut conn = Connection::new(io);
    let asked = |flag: &str| query.split('&').any(|p| p == format!("{flag}=true"));
    let mut wanted = vec!["error", "stdout"];
    if asked("stdin") {
        wanted.push("stdin");
    }
    if asked("stderr") {
        wanted.push("stderr");
    }
    let mut streams: HashMap<String, u32> = HashMap::new();
    while !wanted.iter().all(|w| streams.contains_key(*w)) {
        match conn.read().await {
            Some(Frame::SynStream { id, headers }) => {
                if conn.reply(id).await.is_err() {
                    return;
                }
                if let Some(kind) = headers.get("streamtype") {
                    streams.insert(kind.clone(), id);
                }
            }
            Some(Frame::Ping(id)) => {
                let _ = conn.pong(id).await;
            }
            Some(Frame::GoAway) | None => return,
            Some(_) => {}
        }
    }
    let stdout = streams["stdout"];
    if conn
        .data(stdout, format!("spdy exec {query}\n").as_bytes(), false)
        .await
        .is_err()
    {
        return;
    }
    if let Some(&stdin) = streams.get("stdin") {
        loop {
            match conn.read().await {
                Some(Frame::Data { id, fin, data }) if id == stdin => {
                    if !data.is_empty() && conn.data(stdout, &data, false).await.is_err() {
                        return;
                    }
                    if fin {
                        break;
                    }
                }
                Some(Frame::Ping(id)) => {
                    let _ = conn.pong(id).await;
                }
                Some(Frame::GoAway) | None => return,
                Some(_) => {}
            }
        }
    }
    let _ = conn.data(stdout, b"", true).await;
    if let Some(&stderr) = streams.get("stderr") {
        let _ = conn.data(stderr, b"", true).await;
    }
    let _ = conn
        .data(
            streams["error"],
            br#"{"metadata":{},"status":"Success"}"#,
            true,
        )
        .await;
    // kubectl closes the connection once it has read everything.
    while let Some(frame) = conn.read().await {
        if let Frame::Ping(id) = frame {
            let _ = conn.pong(id).await;
        }
    }
}

/// A port-forward over SPDY (`portforward.k8s.io`): each connection kubectl forwards is
/// an error and a data stream with the same `requestid`; the pod's port echoes what it
/// receives, and when kubectl ends its side, both streams end.
pub async fn serve_port_forward<IO: AsyncRead + AsyncWrite + Unpin>(io: IO) {
    let mut conn = Connection::new(io);
    // requestid → (error stream, data stream), as each is opened.
    let mut requests: HashMap<String, (Option<u32>, Option<u32>)> = HashMap::new();
    let mut data_streams: HashMap<u32, String> = HashMap::new();
    while let Some(frame) = conn.read().await {
        let sent = match frame {
            Frame::SynStream { id, headers } => {
                let request = headers.get("requestid").cloned().unwrap_or_default();
                let entry = requests.entry(request.clone()).or_default();
                match headers.get("streamtype").map(String::as_str) {
                    Some("error") => entry.0 = Some(id),
                    Some("data") => {
                        entry.1 = Some(id);
                        data_streams.insert(id, request);
                    }
                    _ => {}
                }
                conn.reply(id).await
            }
            Frame::Data { id, fin, data } => match data_streams.get(&id).cloned() {
                Some(request) => {
                    let mut sent = conn.data(id, &data, fin).await;
                    if fin && let Some((Some(error), _)) = requests.remove(&request) {
                        sent = sent.and(conn.data(error, b"", true).await);
                    }
                    sent
                }
                None => Ok(()),
            },
            Frame::Ping(id) => conn.pong(id).await,
            Frame::GoAway => return,
            Frame::Other => Ok(()),
        };
        if sent.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    /// The dictionary is the protocol's, byte for byte: kubectl's zlib checks its
    /// Adler-32 too, which the exec and port-forward tests exercise.
    #[test]
    fn dictionary_has_the_protocol_length() {
        let dictionary = super::dictionary();
        assert_eq!(dictionary.len(), 1423);
        assert_eq!(&dictionary[..11], b"\0\0\0\x07options");
        assert!(dictionary.ends_with(b"utf-,*,enq=0."));
    }
}
