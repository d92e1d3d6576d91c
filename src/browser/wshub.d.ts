// TypeScript types of wshub.js (served next to it at /wshub.d.ts). See PROTOCOL.md.

/** A publication's place in its topic: `epoch` is a decimal string (a u64). */
export interface Position {
  epoch: string;
  offset: number;
}

export interface Options {
  /** First backoff step, ms (default 500): the first retry waits a random time in [0, minDelay]. */
  minDelay?: number;
  /** Cap of the backoff step, ms (default 15000). */
  maxDelay?: number;
  /** Time open after which the backoff restarts from its first step, ms (default 5000). */
  stableAfter?: number;
  /** Silence from the server before a ping is sent, ms (default 20000). */
  pingInterval?: number;
  /** Further silence after which the connection is dead and replaced, ms (default 10000). */
  pongTimeout?: number;
  /** Messages send() keeps while offline (default 100); beyond, they are dropped. */
  queueLimit?: number;
  /** WebSocket subprotocols to offer. */
  protocols?: string | string[];
}

export type State = "connecting" | "open" | "reconnecting" | "closed";

/** What a publication carries: text, or bytes for a binary publication (`data_base64`). */
export type Data = string | Uint8Array;

export interface PublicationInfo {
  topic: string;
  /** Present for topics with history. */
  epoch?: string;
  offset?: number;
}

export interface Member {
  /** The session id, a decimal string (a u64 does not fit a JS number). */
  id: string;
  info: string | null;
}

export interface ServerError {
  command?: string;
  topic?: string;
  /** `invalid_topic`, `too_many_topics`, `presence_disabled`, `unavailable`, `closing`, … */
  code: string;
  message?: string;
}

export interface SubscriptionHandlers {
  /** Each publication once, in offset order, across reconnections. */
  onPublication?: (data: Data, info: PublicationInfo) => void;
  /** What was missed cannot be replayed: reload the state; live publications follow. */
  onUnrecoverable?: (position: Position | null) => void;
  /** The server answered a subscribe; `replayed` missed publications follow when `recovered`. */
  onSubscribed?: (answer: { recovered: boolean; replayed: number; position: Position | null }) => void;
  onJoin?: (member: Member) => void;
  onLeave?: (member: { id: string }) => void;
  onError?: (error: ServerError) => void;
  /** Start after this position (e.g. one kept in sessionStorage). */
  since?: Position;
}

export interface Events {
  connecting: (e: { attempt: number }) => void;
  open: (e: Record<string, never>) => void;
  closed: (e: { code: number; reason: string; wasClean: boolean }) => void;
  reconnecting: (e: { attempt: number; delay: number }) => void;
  /** A message that is not part of the protocol: its text (or bytes) and its JSON, if any. */
  message: (data: Data, json: unknown) => void;
  error: (error: ServerError) => void;
  /** send() found the offline queue full: this message was not kept. */
  dropped: (e: { data: string | ArrayBuffer | ArrayBufferView; queued: number }) => void;
  /** The server answered the client's liveness ping; `rtt` in ms when it was the latest one. */
  pong: (e: { rtt: number | undefined }) => void;
}

export declare class Subscription {
  readonly topic: string;
  /** The last publication processed, sent as `since` on the next subscribe. */
  position: Position | null;
  unsubscribe(): void;
}

export declare class Client {
  readonly url: string;
  readonly state: State;
  /** Reconnection attempts since the last stable connection. */
  readonly attempt: number;
  /** The extensions the server accepted on the current socket (e.g. permessage-deflate). */
  readonly extensions: string;
  on<K extends keyof Events>(event: K, listener: Events[K]): () => void;
  subscribe(topic: string, handlers?: SubscriptionHandlers): Subscription;
  unsubscribe(topic: string): boolean;
  /** Sent, or queued while offline: true; dropped because the queue is full: false. */
  send(data: string | ArrayBuffer | ArrayBufferView | object): boolean;
  /** Who is subscribed to `topic` (a topic with presence enabled on the server). */
  presence(topic: string): Promise<Member[]>;
  close(): void;
}

export declare function connect(url: string, options?: Options): Client;
