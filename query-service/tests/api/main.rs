//! The query service end to end, against the real MySQL/MariaDB, RabbitMQ, and a real
//! command service on Postgres; every test on its own databases, exchange and queue.

mod as_of;
mod auth;
mod batch;
mod broker;
mod helpers;
mod outages;
mod reads;
mod rebuild;
mod shutdown;
mod startup;
mod topology;
mod transfers;
mod trust;
mod updates;
