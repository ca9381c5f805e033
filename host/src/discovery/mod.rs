//! Discovery: mainline DHT, mDNS and static peers. (Discovery issue.)
