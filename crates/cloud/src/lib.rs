//! galaxy-cloud: the cloud backend (work in progress).
