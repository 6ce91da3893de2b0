//! The service every io core drives for an [`super::App`]: static files, rate limiting, routing to handlers, and the deferred answers of the document plane, jobs, other cores and worker threads.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::blocking::Pool;
use super::ctx::{Call, Ctx, Deferred, Reply, Request};
use super::router::{Match, Router};
use super::Handler;
use crate::auth::{Auth, AuthError, CredentialCache};
use crate::documents::{DataMsg, Gathered};
use crate::http::date::DateCache;
use crate::http::response::{render_refusal, FileBody};
use crate::http::{Head, HttpError, Persistence, Response, Version};
use crate::limit::{Limiter, Outcome};
use crate::metrics::{AuthDecision, CoreMetrics};
use crate::net::{
    Awaiting, ConnEvent, ConnId, Handled, Mailbox, OutboundCompletion, OutboundIo, Service,
};
use crate::queue::{self, Completion, JobError};
use crate::statics::{self, Index};
use crate::store::thread::StoreReply;

/// The index of the admin listener (`--admin-listen`) on the io core that has it.
pub const ADMIN_LISTENER: usize = 1;

/// Everything another thread or core may tell an io core of an [`super::App`].
pub enum CoreMsg<S> {
    /// The job manager's answer to a request of this core's.
    Job(Completion),
    /// Document traffic from another core's plane: an operation for a
    /// shard this core owns, or a part of an answer this core is gathering.
    Data(DataMsg),
    /// This core's store thread's outcome of an operation.
    Stored(StoreReply),
    /// Work another core's handler asked to run here ([`Ctx::on_core`]).
    Call { from: ConnId, call: Call<S> },
    /// The answer to a call or to blocking work, for a connection of this core.
    Reply { to: ConnId, reply: Reply },
    /// A PostgreSQL shard connection of this core finished its handshake.
    PgOpened(crate::store::pg::shard::Opened),
}

/// A deferred answer, as it comes back to its connection.
#[derive(Debug)]
pub enum Answer {
    Job(queue::Answer),
    Data(Gathered),
    Reply(Reply),
}

fn persistence(keep_alive: bool, version: Version) -> Persistence {
    match (keep_alive, version) {
        (false, _) => Persistence::Close,
        (true, Version::Http11) => Persistence::KeepAlive,
        (true, Version::Http10) => Persistence::KeepAliveHttp10,
    }
}

/// One io core's request dispatcher: its router, date, metrics and handler context.
pub struct AppService<S: 'static> {
    router: Router<Handler<S>>,
    limiter: Option<Arc<Limiter>>,
    auth: Option<Arc<Auth>>,
    /// Credentials this core verified, so a request does not verify them again.
    credentials: CredentialCache,
    statics: Option<Arc<Index>>,
    /// The metrics series of static files: right after the router's.
    statics_route: usize,
    pub ctx: Ctx<S>,
    pub date: DateCache,
    pub metrics: CoreMetrics,
    /// Every core's mailbox, by core: calls and replies between cores.
    mailboxes: Vec<Mailbox<CoreMsg<S>>>,
    blocking: Pool,
    /// Deferred answers ready to be written.
    ready: Vec<(ConnId, Answer)>,
    /// The refusal of a limited request (kept, so refusing allocates nothing).
    limited: HttpError,
}

impl<S: 'static> AppService<S> {
    pub(super) fn new(
        router: Router<Handler<S>>,
        ctx: Ctx<S>,
        mailboxes: Vec<Mailbox<CoreMsg<S>>>,
        blocking: Pool,
    ) -> Self {
        let node = Arc::clone(&ctx.node);
        Self {
            statics_route: router.len(),
            router,
            limiter: node.limiter.clone(),
            auth: node.auth.clone(),
            credentials: CredentialCache::default(),
            statics: node.statics.clone(),
            metrics: node.metrics.recorder(ctx.core()),
            ctx,
            date: DateCache::new(),
            mailboxes,
            blocking,
            ready: Vec::new(),
            limited: HttpError::RateLimited {
                retry_after_secs: 0,
            },
        }
    }

    /// Starts the work a handler deferred, addressed back to `conn`.
    fn start_deferred(&mut self, conn: ConnId, deferred: Deferred<S>) {
        match deferred {
            Deferred::Data(request) => self.ctx.plane.start(request, conn, Instant::now()),
            Deferred::Job(work) => {
                let refused = match &self.ctx.node.queues {
                    None => Some(JobError::JobsDisabled),
                    // The manager is gone: answer now rather than leave the client waiting.
                    Some(queues) => {
                        (!queues.defer(work, Some(conn))).then_some(JobError::JobLogUnavailable)
                    }
                };
                if let Some(error) = refused {
                    self.ready
                        .push((conn, Answer::Job(queue::Answer::Rejected(error))));
                }
            }
            Deferred::Call { core, call } if core == self.ctx.core() => {
                let reply = call(&mut self.ctx);
                self.ready.push((conn, Answer::Reply(reply)));
            }
            Deferred::Call { core, call } => {
                if self.mailboxes[core]
                    .post(CoreMsg::Call { from: conn, call })
                    .is_err()
                {
                    let reply = Reply::error(&HttpError::Draining);
                    self.ready.push((conn, Answer::Reply(reply)));
                } else {
                    self.mailboxes[core].wake();
                }
            }
            Deferred::Blocking(work) => {
                let back = self.mailboxes[self.ctx.core()].clone();
                let task = Box::new(move || {
                    let reply = work();
                    back.deliver(CoreMsg::Reply { to: conn, reply });
                });
                if self.blocking.spawn(task).is_err() {
                    let error = HttpError::Overloaded("the worker threads' queue is full");
                    self.ready.push((conn, Answer::Reply(Reply::error(&error))));
                }
            }
        }
    }

    /// Routes one request to its handler; returns the route's metrics series.
    fn dispatch(
        &mut self,
        conn: ConnId,
        head: &Head<'_, '_>,
        body: &[u8],
        response: &mut Response<'_>,
        keep_alive: bool,
    ) -> Result<Option<usize>, Awaiting> {
        let path = head.path;
        match self.router.route(head.method, path) {
            Match::Found {
                index,
                handler,
                params,
            } => {
                let request = Request {
                    method: head.method,
                    path,
                    query: head.query,
                    headers: head.headers,
                    params,
                    body,
                };
                handler(&request, &mut self.ctx, response);
                if let Some(deferred) = self.ctx.deferred.take() {
                    if !response.is_written() {
                        self.start_deferred(conn, deferred);
                        // Counted in metrics when the answer is written.
                        return Err(Awaiting {
                            keep_alive,
                            version: head.version,
                            head_only: head.method == "HEAD",
                            route: index,
                        });
                    }
                }
                if !response.is_written() {
                    response.error(
                        &HttpError::Internal("the handler wrote no response"),
                        &mut self.ctx.scratch,
                    );
                }
                Ok(Some(index))
            }
            Match::MethodNotAllowed { allow } => {
                let error = HttpError::MethodNotAllowed {
                    method: head.method.to_owned(),
                    allow,
                };
                response.error(&error, &mut self.ctx.scratch);
                Ok(None)
            }
            Match::NotFound => {
                response.error(
                    &HttpError::NotFound {
                        path: path.to_owned(),
                    },
                    &mut self.ctx.scratch,
                );
                Ok(None)
            }
        }
    }

    /// With an admin listener, operator calls are served there alone and
    /// everything else on the public listener alone.
    fn on_its_listener(&self, head: &Head<'_, '_>, listener: usize) -> bool {
        let operator = match self.router.route(head.method, head.path) {
            Match::Found { index, .. } => self.router.is_operator(index),
            _ => false,
        };
        operator == (listener == ADMIN_LISTENER)
    }

    /// Writes a deferred answer as the response to the request that awaited it.
    fn render(&mut self, answer: Answer, response: &mut Response<'_>) {
        match answer {
            Answer::Job(answer) => answer.render(response, &mut self.ctx.scratch),
            Answer::Data(gathered) => gathered.render(response, &mut self.ctx.scratch),
            Answer::Reply(reply) => reply.write(response),
        }
    }
}

impl<S: 'static> Service for AppService<S> {
    type Msg = CoreMsg<S>;
    type Answer = Answer;

    #[inline]
    fn is_draining(&self) -> bool {
        self.ctx.node.is_draining()
    }

    fn wants_peer_addr(&self) -> bool {
        self.limiter.is_some()
    }

    #[inline]
    fn admit(
        &mut self,
        head: &Head<'_, '_>,
        peer: Option<IpAddr>,
        listener: usize,
        now: Instant,
        bodiless: bool,
        headers: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> bool {
        headers.clear();
        if self.ctx.node.admin_listener && !self.on_its_listener(head, listener) {
            let mut response = Response::new(
                out,
                self.date.get(),
                head.method == "HEAD",
                persistence(bodiless && head.keep_alive, head.version),
            );
            let error = HttpError::NotFound {
                path: head.path.to_owned(),
            };
            response.error(&error, &mut self.ctx.scratch);
            self.metrics.request(None, 404);
            return false;
        }
        // Who is asking comes first: the principal may be the rate limiter's key.
        let identity = match &self.auth {
            None => Ok(None),
            Some(auth) => auth.check(
                head.method,
                head.path,
                head.headers,
                &mut self.credentials,
                now,
            ),
        };
        if self.auth.is_some() {
            self.metrics.auth(match &identity {
                Ok(Some(_)) => AuthDecision::Verified,
                Ok(None) => AuthDecision::Anonymous,
                Err(AuthError::Missing) => AuthDecision::Missing,
                Err(AuthError::Invalid(_)) => AuthDecision::Invalid,
                Err(AuthError::Forbidden { .. }) => AuthDecision::Forbidden,
            });
        }
        let principal = identity
            .as_ref()
            .ok()
            .copied()
            .flatten()
            .map(|v| v.principal);
        let verdict = self.limiter.as_ref().and_then(|limiter| {
            limiter.check(head.method, head.path, head.headers, peer, principal, now)
        });
        if let (Some(verdict), Some(limiter)) = (&verdict, &self.limiter) {
            self.metrics.rate_limit(verdict.outcome);
            // Shadow mode changes nothing a client can see.
            if verdict.outcome != Outcome::ShadowLimited {
                limiter.write_headers(verdict, headers);
            }
        }
        let refusal: Option<&dyn crate::http::ApiError> = match (&verdict, &identity) {
            (Some(verdict), _) if verdict.outcome == Outcome::Limited => {
                self.limited = HttpError::RateLimited {
                    retry_after_secs: verdict.retry_after_secs,
                };
                Some(&self.limited)
            }
            (_, Err(error)) => Some(error as &AuthError),
            _ => None,
        };
        let Some(error) = refusal else {
            return true;
        };
        // A refused request's body is never read: with one, the connection closes.
        let keep_alive = bodiless && head.keep_alive && !self.ctx.node.is_draining();
        let mut response = Response::new(
            out,
            self.date.get(),
            head.method == "HEAD",
            persistence(keep_alive, head.version),
        )
        .with_extra_headers(headers);
        response.error(error, &mut self.ctx.scratch);
        self.metrics.request(None, error.status());
        false
    }

    fn handle(
        &mut self,
        conn: ConnId,
        head: &Head<'_, '_>,
        body: &[u8],
        headers: &[u8],
        out: &mut Vec<u8>,
    ) -> Handled {
        let keep_alive = head.keep_alive && !self.is_draining();
        let persistence = persistence(keep_alive, head.version);
        // A copy of the date, so the handler may borrow the service.
        let date = *self.date.get();
        let mut response = Response::new(out, &date, head.method == "HEAD", persistence)
            .with_extra_headers(headers);
        let mut file: Option<FileBody> = None;
        let route = match self
            .statics
            .as_ref()
            .filter(|s| head.path.starts_with(&s.options().prefix))
        {
            Some(statics) => {
                file = statics::serve(statics, head, &mut response, &mut self.ctx.scratch);
                Some(self.statics_route)
            }
            None => match self.dispatch(conn, head, body, &mut response, keep_alive) {
                Ok(route) => route,
                Err(awaiting) => return Handled::Deferred(awaiting),
            },
        };
        self.metrics.request(route, response.status());
        Handled::Answered { keep_alive, file }
    }

    fn render_answer(
        &mut self,
        answer: Answer,
        awaiting: &Awaiting,
        headers: &[u8],
        out: &mut Vec<u8>,
    ) {
        let persistence = persistence(awaiting.keep_alive && !self.is_draining(), awaiting.version);
        let date = *self.date.get();
        let mut response =
            Response::new(out, &date, awaiting.head_only, persistence).with_extra_headers(headers);
        self.render(answer, &mut response);
        self.metrics
            .request(Some(awaiting.route), response.status());
    }

    fn reject(&mut self, error: &HttpError, out: &mut Vec<u8>) {
        let mut response = Response::new(out, self.date.get(), false, Persistence::Close);
        response.error(error, &mut self.ctx.scratch);
        self.metrics.request(None, error.status());
    }

    fn refusal(&mut self, error: &HttpError) -> Vec<u8> {
        render_refusal(error, self.date.get())
    }

    fn on_message(&mut self, msg: CoreMsg<S>, now: Instant) {
        match msg {
            CoreMsg::Job(completion) => self
                .ready
                .push((completion.to, Answer::Job(completion.answer))),
            CoreMsg::Data(msg) => self.ctx.plane.on_message(msg, now),
            CoreMsg::Stored(reply) => self.ctx.plane.on_stored(reply, now),
            CoreMsg::Call { from, call } => {
                let reply = call(&mut self.ctx);
                if from.core == self.ctx.core() {
                    self.ready.push((from, Answer::Reply(reply)));
                } else if let Some(origin) = self.mailboxes.get(from.core) {
                    // A stopped origin has no connection left to answer.
                    origin.deliver(CoreMsg::Reply { to: from, reply });
                }
            }
            CoreMsg::Reply { to, reply } => self.ready.push((to, Answer::Reply(reply))),
            CoreMsg::PgOpened(opened) => self.ctx.plane.on_pg_opened(opened, now),
        }
    }

    #[inline]
    fn next_answer(&mut self) -> Option<(ConnId, Answer)> {
        if let Some(ready) = self.ready.pop() {
            return Some(ready);
        }
        self.ctx
            .plane
            .take_finished()
            .map(|(conn, gathered)| (conn, Answer::Data(gathered)))
    }

    fn end_turn(&mut self) {
        self.ctx.plane.flush_outbox();
    }

    fn drive_outbound(&mut self, io: &mut OutboundIo<'_>, now: Instant) {
        self.ctx.plane.drive_outbound(io, now);
    }

    fn on_outbound(&mut self, io: &mut OutboundIo<'_>, done: OutboundCompletion, now: Instant) {
        self.ctx.plane.on_outbound(io, done, now);
    }

    fn end_batch(&mut self, now: Instant) {
        self.metrics.finish_batch(now);
    }

    fn on_tick(&mut self, _now: Instant) {
        self.date.refresh();
        self.metrics.publish();
    }

    fn on_connection(&mut self, event: ConnEvent) {
        match event {
            ConnEvent::Opened => self.metrics.connection_opened(),
            ConnEvent::Closed => self.metrics.connection_closed(),
            ConnEvent::Refused => self.metrics.connection_refused(),
            ConnEvent::TimedOut => self.metrics.connection_timed_out(),
            ConnEvent::OffCpu => self.metrics.accepted_off_cpu(),
        }
    }
}
