//! Synapse admin API client (placeholder until implemented).

/// Synapse admin API client.
pub struct SynapseClient;
