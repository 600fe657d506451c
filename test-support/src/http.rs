//! A plain HTTP client of one service, as any client would use it, and the assertions
//! on its replies (statuses, RFC 9457 problem documents).

use std::time::Duration;

use serde_json::Value;

/// The answer to a request: status, content type and body: JSON, or the text when it
/// is not JSON (`null` when empty).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
}

impl Reply {
    /// The body, once the status is the expected one.
    pub fn expect(self, status: u16, what: &str) -> Value {
        assert_eq!(self.status, status, "{what}: {}", self.body);
        self.body
    }

    /// The body, once the status is a success.
    pub fn expect_success(self, what: &str) -> Value {
        assert!(
            (200..300).contains(&self.status),
            "{what}: {} {}",
            self.status,
            self.body
        );
        self.body
    }

    /// Checks that this is a problem document of the contract with this status and code.
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.body["code"].as_str()),
            (status, Some(code)),
            "{}",
            self.body
        );
        let media_type = self.content_type.split(';').next().unwrap_or_default();
        assert_eq!(
            media_type.trim(),
            "application/problem+json",
            "{}",
            self.body
        );
        assert_eq!(self.body["status"], status, "{}", self.body);
        assert!(
            self.body["type"].is_string()
                && self.body["title"].is_string()
                && self.body["detail"].is_string(),
            "{}",
            self.body
        );
    }
}

/// A client of one service at `base`.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Api {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(16)
            .build()
            .unwrap_or_else(|error| panic!("an HTTP client: {error}"));
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            token: None,
        }
    }

    /// The same client, sending `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The underlying client, for requests the helpers do not cover.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `base` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(self.url(path)), path).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_with_headers(path, body, &[]).await
    }

    pub async fn post_with_headers(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.http.post(self.url(path)).json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request, path).await
    }

    /// Every event of a command service's global feed (`GET /events`), page by page.
    pub async fn feed(&self) -> Vec<Value> {
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .get(&format!("/events?after={after}&limit=1000"))
                .await
                .expect(200, "feed");
            let batch = page["events"].as_array().cloned().unwrap_or_default();
            if batch.is_empty() {
                return events;
            }
            let Some(next) = page["next_after"].as_u64() else {
                panic!("no next_after in {page}");
            };
            after = next;
            events.extend(batch);
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder, path: &str) -> Reply {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        match request.send().await {
            Ok(response) => read(response).await.unwrap_or_else(|| {
                panic!("{}{path}: the connection broke while reading", self.base)
            }),
            Err(error) => panic!("{}{path} is unreachable: {error}", self.base),
        }
    }
}

async fn read(response: reqwest::Response) -> Option<Reply> {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.ok()?;
    let body = match serde_json::from_str(&text) {
        Ok(json) => json,
        Err(_) if text.is_empty() => Value::Null,
        Err(_) => Value::String(text),
    };
    Some(Reply {
        status,
        content_type,
        body,
    })
}

/// [`Reply::assert_problem`], as a function.
pub fn assert_problem(reply: &Reply, status: u16, code: &str) {
    reply.assert_problem(status, code);
}
