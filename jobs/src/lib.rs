//! Shared code of the API and the workers: the catalogue, the instance model, storage, the job
//! queue, the Kubernetes objects of an instance, the reading of its state and the LDAP sync of
//! investigations.

pub mod catalogue;
pub mod investigations;
pub mod ldap;
pub mod model;
pub mod objects;
pub mod prometheus;
pub mod quantity;
pub mod queue;
pub mod settings;
pub mod state;
pub mod store;
