//! HTTP to one signaling server's REST API: JSON reads, the operator's
//! actions and the Server-Sent Events stream, each bounded in time so a
//! backend that hangs never holds a page or a task.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// Why a request to a backend failed, worded for the operator.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No answer within the backend timeout.
    #[error("timed out after {0} ms")]
    Timeout(u128),
    /// The connection failed.
    #[error("unreachable: {0}")]
    Connect(String),
    /// The backend refused the token (or none was sent).
    #[error("HTTP 401: the backend wants a valid API token")]
    Unauthorized,
    /// The backend has no such endpoint or object.
    #[error("HTTP 404: {0}")]
    NotFound(String),
    /// Any other non-2xx status, with the API's `detail` when it gave one.
    #[error("HTTP {status}: {detail}")]
    Status { status: u16, detail: String },
    /// The body was not the JSON expected.
    #[error("unexpected answer: {0}")]
    Body(String),
}

/// A bearer token, marked sensitive so it is never logged by hyper.
#[derive(Clone, Debug)]
pub struct Token(HeaderValue);

impl Token {
    /// `None` when `token` cannot be sent in a header.
    pub fn new(token: &str) -> Option<Token> {
        let mut value = HeaderValue::try_from(format!("Bearer {token}")).ok()?;
        value.set_sensitive(true);
        Some(Token(value))
    }
}

/// A client of one backend.
#[derive(Clone, Debug)]
pub struct BackendClient {
    base: String,
    http: HttpClient,
    timeout: Duration,
}

impl BackendClient {
    /// A client of the REST API at `base` (`http://host:port`).
    pub fn new(base: &str, timeout: Duration) -> BackendClient {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        BackendClient {
            base: base.to_owned(),
            http: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&Token>,
    ) -> Result<Request<Empty<Bytes>>, ClientError> {
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|e| ClientError::Connect(format!("bad URL: {e}")))?;
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(Token(value)) = token {
            request = request.header(header::AUTHORIZATION, value.clone());
        }
        request
            .body(Empty::new())
            .map_err(|e| ClientError::Connect(e.to_string()))
    }

    /// Sends a request and reads the whole answer within the timeout.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        token: Option<&Token>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let request = self.request(method, path, token)?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| ClientError::Connect(connect_error(&e)))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Body(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(self.timeout.as_millis()))?
    }

    /// `GET path`, parsed as `T`.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&Token>,
    ) -> Result<T, ClientError> {
        let (status, body) = self.exchange(Method::GET, path, token).await?;
        check(status, &body)?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Body(e.to_string()))
    }

    /// A mutating request (`POST`, `DELETE`) without a body; the answer's
    /// body is not needed, only whether it succeeded.
    pub async fn act(
        &self,
        method: Method,
        path: &str,
        token: Option<&Token>,
    ) -> Result<(), ClientError> {
        let (status, body) = self.exchange(method, path, token).await?;
        check(status, &body)
    }

    /// Opens `GET path` as an event stream: the connection and the headers
    /// are bounded by the timeout, the body is not (it is the stream).
    pub async fn open_stream(
        &self,
        path: &str,
        token: Option<&Token>,
    ) -> Result<axum::body::Body, ClientError> {
        let mut request = self.request(Method::GET, path, token)?;
        request.headers_mut().insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let response = tokio::time::timeout(self.timeout, self.http.request(request))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout.as_millis()))?
            .map_err(|e| ClientError::Connect(connect_error(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let body = tokio::time::timeout(self.timeout, response.into_body().collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            check(status, &body)?;
            return Err(ClientError::Body(format!("HTTP {status}")));
        }
        Ok(axum::body::Body::new(response.into_body()))
    }
}

/// The innermost cause of a connection error (hyper's outer text is only
/// "client error (Connect)").
fn connect_error(error: &hyper_util::client::legacy::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(error);
    let mut last = error.to_string();
    while let Some(e) = source {
        last = e.to_string();
        source = e.source();
    }
    last
}

fn check(status: StatusCode, body: &[u8]) -> Result<(), ClientError> {
    if status.is_success() {
        return Ok(());
    }
    // The API's errors are `{"error": code, "detail": text}`.
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    Err(match status {
        StatusCode::UNAUTHORIZED => ClientError::Unauthorized,
        StatusCode::NOT_FOUND => ClientError::NotFound(detail),
        _ => ClientError::Status {
            status: status.as_u16(),
            detail,
        },
    })
}

/// One Server-Sent Event: its name (`message` when none was given) and data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub name: String,
    pub data: String,
}

/// Splits an event stream into events (the parts of the SSE format the
/// API uses: `event:`, `data:`, comments, LF or CRLF line ends). Fed with
/// chunks as they arrive; holds an incomplete line until the next chunk.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    name: String,
    data: String,
}

impl SseParser {
    /// The events completed by `chunk`.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &byte in chunk {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let line = String::from_utf8_lossy(&self.line).into_owned();
            self.line.clear();
            if line.is_empty() {
                if !self.data.is_empty() || !self.name.is_empty() {
                    let name = std::mem::take(&mut self.name);
                    events.push(SseEvent {
                        name: if name.is_empty() {
                            "message".to_owned()
                        } else {
                            name
                        },
                        data: std::mem::take(&mut self.data),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.name = value.to_owned(),
                "data" => {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                }
                _ => {}
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_split_across_chunks_and_comments_skipped() {
        let mut parser = SseParser::default();
        assert!(parser.feed(b": keep-alive\n\nevent: call_cre").is_empty());
        let events = parser.feed(b"ated\r\ndata: {\"id\":\"c1\"}\r\n\r\ndata: a\ndata: b\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    name: "call_created".into(),
                    data: r#"{"id":"c1"}"#.into()
                },
                SseEvent {
                    name: "message".into(),
                    data: "a\nb".into()
                }
            ]
        );
    }

    #[tokio::test]
    async fn a_backend_that_never_answers_times_out_in_the_time_given() {
        // A listener that accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let client = BackendClient::new(&format!("http://{addr}"), Duration::from_millis(200));
        let started = std::time::Instant::now();
        let result = client
            .get_json::<serde_json::Value>("/api/v1/health", None)
            .await;
        assert_eq!(result, Err(ClientError::Timeout(200)));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
