//! The query service end to end, against the real MySQL/MariaDB, RabbitMQ, and a real
//! command service on Postgres; every test on its own databases, exchange and queue.

mod batch;
mod broker;
mod helpers;
mod outages;
mod proxy;
mod reads;
mod rebuild;
mod shutdown;
