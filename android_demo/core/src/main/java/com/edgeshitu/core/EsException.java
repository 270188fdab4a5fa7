package com.edgeshitu.core;

/** A problem the user can fix, as ONE line (what, where, what to do) — never a stack trace. */
public class EsException extends RuntimeException {
    /** 2: bad bundle or argument (refused before any photo); 1: one photo failed. */
    public final int exitCode;

    public EsException(String message) {
        this(message, 2);
    }

    public EsException(String message, int exitCode) {
        super(message.replace('\n', ' '));
        this.exitCode = exitCode;
    }
}
