//! virtkit-testkit
