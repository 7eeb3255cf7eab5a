//! The `menet` binary's library half: the command line and config file ([`config`]) and the admin
//! HTTP API ([`api`]), kept in a library so the fuzz targets and tests can reach the parsers.

pub mod api;
pub mod app;
pub mod body;
pub mod config;
pub mod events;
pub mod http;
pub mod logfmt;
pub mod openapi;
pub mod ops;
pub mod rest;
