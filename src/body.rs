//! The one body type the proxy sends and receives: buffered bytes or a streamed hyper body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

use crate::upstream::pool::UpstreamBody;

/// The error type of every body the proxy handles.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response or request body: bytes held in memory (cache hits, errors) or a stream passed through.
#[derive(Debug)]
pub enum Body {
    /// Buffered bytes; `None` once sent.
    Full(Option<Bytes>),
    /// A body streamed from the peer without buffering (passthrough).
    Stream(Incoming),
    /// A streamed client body that fails with [`TooLarge`] once it passes a byte limit.
    Limited(http_body_util::Limited<Incoming>, usize),
    /// A streamed answer from Mono, driving its pooled connection (passthrough).
    Upstream(UpstreamBody<Body>),
}

impl Body {
    /// A body with no bytes.
    pub fn empty() -> Self {
        Body::Full(None)
    }

    /// A streamed client body refused with [`TooLarge`] past `limit` bytes.
    pub fn limited(body: Incoming, limit: usize) -> Self {
        Body::Limited(http_body_util::Limited::new(body, limit), limit)
    }

    /// A body holding `bytes`, sent without copying.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            Body::Full(None)
        } else {
            Body::Full(Some(bytes))
        }
    }
}

impl From<Incoming> for Body {
    fn from(body: Incoming) -> Self {
        Body::Stream(body)
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Body::Upstream(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            // Typed errors, so whoever sees it fail (the upstream client) can tell the client's
            // oversized (413) or broken (400) body from a broken upstream (502).
            Body::Limited(body, limit) => {
                let limit = *limit;
                Pin::new(body).poll_frame(cx).map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        Box::new(TooLarge(limit)) as BoxError
                    } else {
                        Box::new(BrokenBody) as BoxError
                    }
                })
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_none(),
            Body::Stream(body) => body.is_end_stream(),
            Body::Upstream(body) => body.is_end_stream(),
            Body::Limited(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream(body) => body.size_hint(),
            Body::Upstream(body) => body.size_hint(),
            Body::Limited(body, _) => body.size_hint(),
        }
    }
}

/// A streamed request body passed its limit (bytes) while being forwarded.
#[derive(Debug, thiserror::Error)]
#[error("request body is larger than {0} bytes")]
pub struct TooLarge(pub usize);

/// A streamed request body the client broke (bad chunked framing, cut short) while it was being
/// forwarded. hyper's own error text stays out of the answer: it describes our parser, not Mono.
#[derive(Debug, thiserror::Error)]
#[error("the request body was malformed or ended early")]
pub struct BrokenBody;

/// Reads a whole body into memory, refusing one larger than `limit` bytes.
pub async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, CollectError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(CollectError::TooLarge);
    }
    let limited = http_body_util::Limited::new(body, limit);
    match http_body_util::BodyExt::collect(limited).await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(CollectError::TooLarge)
        }
        Err(e) => Err(CollectError::Read(e.to_string())),
    }
}

/// Why a body could not be read into memory.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The body is larger than the limit.
    #[error("body larger than the limit")]
    TooLarge,
    /// The peer failed mid-body.
    #[error("body read failed: {0}")]
    Read(String),
}
