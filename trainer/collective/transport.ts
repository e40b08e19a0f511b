/**
 * What the ring algorithms need from a network: one ordered byte-frame channel to the next rank, one (for
 * control frames) to the previous rank, established per membership generation. The gRPC transport
 * (`grpc-transport.ts`) is one implementation.
 */

export interface PeerAddress {
  rank: number;
  host: string;
  port: number;
}

/** The ring for one generation. `peers` lists every rank's address (this rank's own entry is not dialled). */
export interface RingView {
  generation: number;
  rank: number;
  worldSize: number;
  peers: PeerAddress[];
}

export type LinkSide = 'prev' | 'next';

export interface TransportEvents {
  /** A frame arrived: from the previous rank (data) or the next rank (control). */
  onFrame(frame: Buffer, side: LinkSide): void;
  /** The neighbour on `side` left the generation in order (BYE), after all its data frames. */
  onPeerLeft(side: LinkSide, peerRank: number): void;
  /** A link of the current generation broke (without BYE); `peerRank` is the neighbour on that side. */
  onLinkLost(side: LinkSide, peerRank: number, reason: string): void;
}

export interface Transport {
  /** Starts listening (before peers are known: the address is announced at rendezvous). */
  listen(): Promise<{ host: string; port: number }>;
  /**
   * Opens the links for `view`, replacing those of an earlier generation. Resolves when the stream to the
   * previous rank is accepted and the next rank's stream has arrived; rejects with a CollectiveError naming the
   * peer on refusal or after the transport's timeout.
   */
  connect(view: RingView): Promise<void>;
  setEvents(events: TransportEvents): void;
  /**
   * Queues a frame to the next rank; `onWritten` runs once the buffer may be reused. Returns false when the
   * caller should wait for `drained()` before queuing more. `frame` must come from `FrameEncoder`/`allocFrame` or
   * from `onFrame`: the transport may write a length prefix into the bytes just before it.
   */
  sendNext(frame: Buffer, onWritten?: () => void): boolean;
  /**
   * Optional: takes back a frame that `onFrame` delivered, once the caller holds no reference to it (after using
   * it, or after the write of it as a forwarded frame completed), so that its buffer is reused.
   */
  recycle?(frame: Buffer): void;
  drained(): Promise<void>;
  /** Queues a control frame to the previous rank (best effort). */
  sendPrev(frame: Buffer): void;
  /**
   * Leaves the current generation in order: says BYE on both links after the queued frames, then half-closes
   * them (no events are reported for them afterwards).
   */
  disconnect(): void;
  /**
   * Leaves in order (as `disconnect`), waits up to `graceMs` for the neighbours to take the last frames, then
   * closes the server and channels.
   */
  close(graceMs: number): Promise<void>;
}
