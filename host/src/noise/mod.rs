//! Noise XX handshake and XSalsa20 transport cipher. (Wire issue.)
