//! Collection datagrams built from packets already encoded: the stored bytes of signed messages
//! go out verbatim, split over the datagram budget, or one at a time with relay hops.

/// Bytes a collection datagram spends around its packets (outer message, descriptor and
/// collection headers), an upper bound used when splitting collections.
pub const COLLECTION_OVERHEAD: usize = 32;

/// Encodes one collection datagram holding `packets` verbatim (no re-encoding of the signed
/// messages: an embedded message on the wire is its bytes behind a tag and a length).
pub fn encode_collection(session: u32, packets: &[&[u8]]) -> Vec<u8> {
    collection_datagram(session, packets, None)
}

/// One collection datagram holding `packets` verbatim, with the relay hops they may still travel
/// if they are relayed.
pub(super) fn collection_datagram(
    session: u32,
    packets: &[&[u8]],
    relay_hops: Option<u32>,
) -> Vec<u8> {
    let mut collection = Vec::with_capacity(packets.iter().map(|p| p.len() + 4).sum::<usize>() + 8);
    prost::encoding::uint32::encode(1, &session, &mut collection);
    for packet in packets {
        prost::encoding::encode_key(
            2,
            prost::encoding::WireType::LengthDelimited,
            &mut collection,
        );
        prost::encoding::encode_varint(packet.len() as u64, &mut collection);
        collection.extend_from_slice(packet);
    }
    if let Some(hops) = relay_hops {
        prost::encoding::uint32::encode(3, &hops, &mut collection);
    }
    let mut descriptor = Vec::with_capacity(collection.len() + 4);
    prost::encoding::bytes::encode(7, &collection, &mut descriptor);
    let mut datagram = Vec::with_capacity(descriptor.len() + 4);
    prost::encoding::bytes::encode(1, &descriptor, &mut datagram);
    datagram
}

/// Splits `packets` over as few collection datagrams of at most `max_datagram` bytes as the
/// order allows. A packet that cannot fit even alone is returned in `Err` with its index.
pub fn encode_collections(
    session: u32,
    packets: &[&[u8]],
    max_datagram: usize,
) -> Result<Vec<Vec<u8>>, usize> {
    let budget = max_datagram.saturating_sub(COLLECTION_OVERHEAD);
    let mut datagrams = Vec::new();
    let mut batch: Vec<&[u8]> = Vec::new();
    let mut used = 0;
    for (i, packet) in packets.iter().enumerate() {
        let cost = packet.len() + 1 + varint_len(packet.len());
        if cost > budget {
            return Err(i);
        }
        if used + cost > budget {
            datagrams.push(encode_collection(session, &batch));
            batch.clear();
            used = 0;
        }
        batch.push(packet);
        used += cost;
    }
    if !batch.is_empty() {
        datagrams.push(encode_collection(session, &batch));
    }
    Ok(datagrams)
}

/// Encodes one collection datagram relaying `packet`, which may travel `hops` more hops after
/// the receiver.
pub fn encode_relay(session: u32, packet: &[u8], hops: u32) -> Vec<u8> {
    collection_datagram(session, &[packet], Some(hops))
}

fn varint_len(value: usize) -> usize {
    prost::encoding::encoded_len_varint(value as u64)
}
